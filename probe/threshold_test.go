package probe_test

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/probe"
)

// TestMainThresholds: without thresholds the exit status is as it always
// was (0 if a connection worked); -min-resumption and -max-failures turn a
// farm that works only in part into exit 1, with one line saying why.
func TestMainThresholds(t *testing.T) {
	alone := startFarm(t, 2, false) // resumes nothing across nodes
	shared := startFarm(t, 2, true)
	half := []string{shared.addrs[0], refusedAddr(t)} // every other connection refused
	for _, tc := range []struct {
		name    string
		targets []string
		args    []string
		code    int
		reason  string
	}{
		{"NoThresholdNoResumption", alone.addrs, nil, 0, ""},
		{"NoThresholdHalfFailed", half, nil, 0, ""},
		{"ResumptionMissed", alone.addrs, []string{"-min-resumption", "0.99"}, 1,
			"resumption 0.0% (0 of 9 offered sessions resumed) is below -min-resumption 99%"},
		{"ResumptionMissedPercent", alone.addrs, []string{"-min-resumption", "50%"}, 1,
			"resumption 0.0% (0 of 9 offered sessions resumed) is below -min-resumption 50%"},
		{"ResumptionMet", shared.addrs, []string{"-min-resumption", "1", "-max-failures", "0"}, 0, ""},
		{"NothingOffered", shared.addrs, []string{"-n", "1", "-min-resumption", "0"}, 1,
			"no handshake offered a session, so resumption is unmeasured (-min-resumption 0%)"},
		{"FailuresOverCount", half, []string{"-max-failures", "4"}, 1,
			"5 of 10 connections failed (refused=5), more than -max-failures 4"},
		{"FailuresAtCount", half, []string{"-max-failures", "5"}, 0, ""},
		{"FailuresOverShare", half, []string{"-max-failures", "40%"}, 1,
			"5 of 10 connections failed (refused=5), more than -max-failures 40%"},
		{"FailuresAtShare", half, []string{"-max-failures", "50%"}, 0, ""},
		// Printed as given, not as 100*(0.45/100) in floating point
		// (0.45000000000000007%).
		{"FailuresOverSharePrinted", half, []string{"-max-failures", "0.45%"}, 1,
			"5 of 10 connections failed (refused=5), more than -max-failures 0.45%"},
		{"ResumptionMissedPrinted", alone.addrs, []string{"-min-resumption", "0.0023"}, 1,
			"resumption 0.0% (0 of 9 offered sessions resumed) is below -min-resumption 0.23%"},
		{"BothMissed", alone.addrs[:1], []string{"-n", "1", "-min-resumption", "0.5", "-max-failures", "0"}, 1,
			"no handshake offered a session, so resumption is unmeasured (-min-resumption 50%)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			args := append([]string{"-targets", strings.Join(tc.targets, ","), "-n", "10", "-pick", "roundrobin",
				"-tls", "1.3", "-insecure", "-json"}, tc.args...)
			code := probe.Main(args, &stdout, &stderr)
			if code != tc.code {
				t.Errorf("exit code %d, want %d; stderr %q", code, tc.code, stderr.String())
			}
			want := ""
			if tc.reason != "" {
				want = "tlsfarm probe: " + tc.reason + "\n"
			}
			if stderr.String() != want {
				t.Errorf("stderr %q, want %q", stderr.String(), want)
			}
			var rep probe.Report
			if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
				t.Errorf("the report is printed all the same; got %v:\n%s", err, stdout.String())
			}
		})
	}
}

func TestMainThresholdFlagErrors(t *testing.T) {
	for _, tc := range []struct{ args, want string }{
		{"-min-resumption 1.5", `invalid value "1.5" for flag -min-resumption`},
		{"-min-resumption 101%", `invalid value "101%" for flag -min-resumption`},
		{"-min-resumption 1.00000000000000000001", `invalid value "1.00000000000000000001" for flag -min-resumption`},
		{"-min-resumption NaN", `invalid value "NaN" for flag -min-resumption`},
		{"-min-resumption -0.1", `invalid value "-0.1" for flag -min-resumption`},
		{"-max-failures -1", `invalid value "-1" for flag -max-failures`},
		{"-max-failures 0.5", `invalid value "0.5" for flag -max-failures`},
		{"-max-failures 200%", `invalid value "200%" for flag -max-failures`},
	} {
		var stdout, stderr bytes.Buffer
		code := probe.Main(append([]string{"-targets", "127.0.0.1:1"}, strings.Fields(tc.args)...), &stdout, &stderr)
		if code != 2 || !strings.Contains(stderr.String(), tc.want) || strings.Count(stderr.String(), "\n") != 1 {
			t.Errorf("%s: exit %d, stderr %q; want 2 and one line about %q", tc.args, code, stderr.String(), tc.want)
		}
	}
}

// abortEveryOther serves TLS on a loopback socket and closes every second
// connection at once, unanswered: its clients offer a session there (one
// from the connection before) and the handshake fails.
func abortEveryOther(t *testing.T, version uint16) string {
	t.Helper()
	cert, _ := tlstest.SharedCert()
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: version, MaxVersion: version}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for n := 0; ; n++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if n%2 == 1 {
				c.Close()
				continue
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				tc := tls.Server(c, cfg)
				if tc.Handshake() != nil {
					return
				}
				buf := make([]byte, 512)
				tc.Read(buf)
				io.WriteString(tc, "HTTP/1.0 200 OK\r\n\r\n")
			})
		}
	})
	return ln.Addr().String()
}

// TestFailedOfferCountsAsNotResumed: a node that aborts the handshakes
// offered a session (rather than falling back to a full handshake) must
// not read as resuming "everything offered": the offers whose handshake
// failed count in Offered and OfferFailed, and the resumption rate sees
// them as not resumed.
func TestFailedOfferCountsAsNotResumed(t *testing.T) {
	for _, v := range []struct {
		name    string
		version uint16
	}{{"TLS12", tls.VersionTLS12}, {"TLS13", tls.VersionTLS13}} {
		t.Run(v.name, func(t *testing.T) {
			addr := abortEveryOther(t, v.version)
			_, pool := tlstest.SharedCert()
			rep, err := probe.Run(t.Context(), probe.Config{Targets: []string{addr}, RootCAs: pool,
				ServerName: "localhost", Timeout: 5 * time.Second, Connections: 10, Version: v.version}, nil)
			if err != nil {
				t.Fatal(err)
			}
			checkSums(t, rep)
			// 1 full, 2 offers the session of 1 and is cut (crypto/tls
			// drops that session), 3 has none and makes a full one...
			tot := rep.Total
			if tot.Full != 5 || tot.Failed != 5 || tot.Resumed != 0 || tot.Offered != 5 || tot.OfferFailed != 5 ||
				tot.ResumptionRate != 0 || tot.Errors[probe.FailHandshake] != 5 {
				t.Errorf("report %+v; want 5 full, 5 failed offers, rate 0", tot)
			}
			var table bytes.Buffer
			if err := rep.WriteTable(&table); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(table.String(), "OFFER-FAILED") || !strings.Contains(table.String(), "0.0%") {
				t.Errorf("the table does not show the failed offers:\n%s", table.String())
			}
		})
	}
}

// TestMainThresholdAtTheLimit: a run exactly at a threshold given with
// decimals meets it. 999 of 1000 offered sessions resumed is 99.9%, and 7
// failed of 125 connections is 5.6%; comparing in floating point (99.9/100
// is a hair above 0.999, 5.6/100 a hair below 0.056) failed both runs.
func TestMainThresholdAtTheLimit(t *testing.T) {
	good := startFarm(t, 1, false).addrs[0]
	alone := startFarm(t, 1, false).addrs[0]
	for _, tc := range []struct {
		name    string
		targets []string
		n       int
		arg     string
		code    int
	}{
		// Connection 0 is a full handshake on alone, 1 offers alone's
		// session to good (full), 2 to 1000 resume on good: 999 of 1000.
		{"ResumptionAt", append([]string{alone}, slices.Repeat([]string{good}, 1000)...), 1001, "-min-resumption=99.9%", 0},
		// As above, and connection 125 is on alone again: 123 of 125.
		{"ResumptionAtFraction", append([]string{alone}, slices.Repeat([]string{good}, 124)...), 126, "-min-resumption=0.984", 0},
		{"ResumptionAtPercent", append([]string{alone}, slices.Repeat([]string{good}, 124)...), 126, "-min-resumption=98.4%", 0},
		{"ResumptionUnder", append([]string{alone}, slices.Repeat([]string{good}, 124)...), 126, "-min-resumption=98.41%", 1},
		// The refused target is 1 of 18 in turn: 7 of 125 fail.
		{"FailuresAt", append([]string{refusedAddr(t)}, slices.Repeat([]string{good}, 17)...), 125, "-max-failures=5.6%", 0},
		{"FailuresOver", append([]string{refusedAddr(t)}, slices.Repeat([]string{good}, 17)...), 125, "-max-failures=5.59%", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			args := []string{"-targets", strings.Join(tc.targets, ","), "-n", strconv.Itoa(tc.n), "-pick", "roundrobin",
				"-tls", "1.2", "-insecure", "-json", tc.arg}
			if code := probe.Main(args, &stdout, &stderr); code != tc.code {
				var rep probe.Report
				json.Unmarshal(stdout.Bytes(), &rep)
				t.Errorf("%s: exit code %d, want %d; stderr %q; total %d connections, %d failed, %d of %d offered resumed",
					tc.arg, code, tc.code, stderr.String(), rep.Total.Connections, rep.Total.Failed, rep.Total.Resumed, rep.Total.Offered)
			}
		})
	}
}

// TestMainNoPerfectScoreByRounding: 1999 of 2000 offered sessions
// resumed reads as 99.9%, in the table and in the threshold's line, not
// as the 100.0% that rounding to one decimal made of it, next to a
// threshold of 100% that it missed.
func TestMainNoPerfectScoreByRounding(t *testing.T) {
	good := startFarm(t, 1, false).addrs[0]
	alone := startFarm(t, 1, false).addrs[0]
	// Connection 0 is a full handshake on alone, 1 offers alone's session
	// to good (full), 2 to 2000 resume on good: 1999 of 2000.
	targets := append([]string{alone}, slices.Repeat([]string{good}, 2000)...)
	var stdout, stderr bytes.Buffer
	args := []string{"-targets", strings.Join(targets, ","), "-n", "2001", "-pick", "roundrobin",
		"-tls", "1.2", "-insecure", "-min-resumption", "100%"}
	if code := probe.Main(args, &stdout, &stderr); code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	const want = "tlsfarm probe: resumption 99.9% (1999 of 2000 offered sessions resumed) is below -min-resumption 100%\n"
	if stderr.String() != want {
		t.Errorf("stderr %q, want %q", stderr.String(), want)
	}
	var total string
	for line := range strings.Lines(stdout.String()) {
		if strings.HasPrefix(line, "total ") {
			total = line
			break
		}
	}
	if f := strings.Fields(total); len(f) < 8 || f[6] != "99.9%" {
		t.Errorf("total row %q, want a resumption of 99.9%%", total)
	}
}
