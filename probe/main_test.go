package probe_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tlsfarm/tlsfarm/probe"
)

func TestMainFlagErrors(t *testing.T) {
	const addr = "127.0.0.1:1"
	badPEM := filepath.Join(t.TempDir(), "bad.pem")
	if err := os.WriteFile(badPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"UnknownFlag", []string{"-targets", addr, "-bogus"}, "flag provided but not defined: -bogus"},
		{"BadNumber", []string{"-targets", addr, "-n", "many"}, `invalid value "many" for flag -n`},
		{"NoTargets", nil, "no targets"},
		{"BadTarget", []string{"-targets", "[::1"}, `bad target "[::1"`},
		{"PortZero", []string{"-targets", "127.0.0.1:0"}, `bad target "127.0.0.1:0"`},
		{"PortOutOfRange", []string{"-targets", "127.0.0.1:65536"}, `bad target "127.0.0.1:65536"`},
		{"BadPick", []string{"-targets", addr, "-pick", "sticky"}, `unknown pick "sticky"`},
		{"BadVersion", []string{"-targets", addr, "-tls", "1.1"}, `-tls "1.1": want 1.2, 1.3 or any`},
		{"NoClients", []string{"-targets", addr, "-c", "0"}, "-c 0: need at least one client"},
		{"NegativeConnections", []string{"-targets", addr, "-n", "-5"}, "negative number of connections -5"},
		{"ZeroConnections", []string{"-targets", addr, "-n", "0"}, "-n 0: need at least one connection"},
		{"ZeroDuration", []string{"-targets", addr, "-d", "0s"}, "-d 0s: must be positive"},
		{"ZeroDurationWithConnections", []string{"-targets", addr, "-n", "5", "-d", "0"}, "-d 0s: must be positive"},
		{"RateNaN", []string{"-targets", addr, "-rate", "NaN"}, "rate is not a number"},
		{"ZeroTimeout", []string{"-targets", addr, "-timeout", "0s"}, "-timeout 0s: must be positive"},
		{"BadRequest", []string{"-targets", addr, "-request", "GET"}, `bad request "GET"`},
		{"MissingCAFile", []string{"-targets", addr, "-cacert", filepath.Join(t.TempDir(), "none.pem")}, "-cacert: open"},
		{"CAFileWithoutCertificates", []string{"-targets", addr, "-cacert", badPEM}, "no PEM certificates"},
		{"CAFileAndInsecure", []string{"-targets", addr, "-cacert", badPEM, "-insecure"}, "exclude each other"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := probe.Main(tc.args, &stdout, &stderr)
			if code != 2 {
				t.Errorf("exit code %d, want 2", code)
			}
			msg := stderr.String()
			if !strings.HasPrefix(msg, "tlsfarm probe: ") || !strings.Contains(msg, tc.want) || strings.Count(msg, "\n") != 1 {
				t.Errorf("stderr %q, want one line about %q", msg, tc.want)
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout %q, want nothing", stdout.String())
			}
		})
	}
}

func TestMainHelp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := probe.Main([]string{"-h"}, &stdout, &stderr); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	for _, flag := range []string{"-targets", "-n", "-c", "-pick", "-tls", "-insecure", "-json"} {
		if !strings.Contains(stdout.String(), "  "+flag) {
			t.Errorf("usage does not mention %s:\n%s", flag, stdout.String())
		}
	}
}

func TestMainJSONParsesBack(t *testing.T) {
	f := startFarm(t, 2, true)
	var stdout, stderr bytes.Buffer
	code := probe.Main([]string{"-targets", strings.Join(f.addrs, ","), "-n", "20", "-c", "2",
		"-pick", "roundrobin", "-tls", "1.3", "-insecure", "-json"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit code %d; stderr: %s", code, stderr.String())
	}
	if stderr.Len() != 0 {
		t.Errorf("stderr %q, want nothing (not a terminal)", stderr.String())
	}
	var rep probe.Report
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("%v in:\n%s", err, stdout.String())
	}
	checkSums(t, &rep)
	if rep.Total.Connections != 20 || rep.Total.Resumed != 18 || rep.Total.ResumptionRate != 1 ||
		len(rep.Targets) != 2 || rep.Targets[0].Target != f.addrs[0] || rep.Version != "TLS 1.3" ||
		rep.Pick != "roundrobin" || rep.Concurrency != 2 || rep.Elapsed <= 0 {
		t.Errorf("report parsed back as %+v", rep)
	}
	if rep.Total.ResumedLatency.Connect.P50 <= 0 {
		t.Errorf("resumed latency %+v", rep.Total.ResumedLatency)
	}
	// The keys a script would read.
	for _, key := range []string{`"resumption_rate": 1`, `"cross_node": `, `"p99_ms": `, `"elapsed_ms": `, `"full_latency": `} {
		if !strings.Contains(stdout.String(), key) {
			t.Errorf("JSON lacks %s:\n%s", key, stdout.String())
		}
	}
}

func TestMainTable(t *testing.T) {
	f := startFarm(t, 2, false)
	var stdout, stderr bytes.Buffer
	code := probe.Main(append([]string{"-n", "10", "-pick", "roundrobin", "-insecure", "-tls", "1.2"}, f.addrs...), &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit code %d; stderr: %s", code, stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{
		"10 connections to 2 targets from 1 client (roundrobin, TLS 1.2",
		"TARGET", "RESUMPTION", "CROSS-NODE", f.addrs[0], f.addrs[1],
		"total", "0.0%", "connect", "handshake", "full",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

func TestMainAllFailed(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := probe.Main([]string{"-targets", refusedAddr(t), "-n", "5", "-insecure"}, &stdout, &stderr)
	if code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	if want := "tlsfarm probe: all 5 connections failed (refused=5)\n"; stderr.String() != want {
		t.Errorf("stderr %q, want %q", stderr.String(), want)
	}
	if !strings.Contains(stdout.String(), "refused=5") {
		t.Errorf("the report is printed all the same; got:\n%s", stdout.String())
	}
}
