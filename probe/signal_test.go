//go:build unix

package probe_test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/probe"
)

// mainEnv, set in the environment of a copy of the test binary, makes
// TestMainProcess run probe.Main with the arguments after "--".
const mainEnv = "PROBE_TEST_MAIN"

// TestMainProcess is not a test: it is probe.Main as a process of its
// own, for the tests that send it signals.
func TestMainProcess(t *testing.T) {
	if os.Getenv(mainEnv) != "1" {
		t.Skip("run by the tests that signal probe.Main")
	}
	args := os.Args
	for i, a := range args {
		if a == "--" {
			args = args[i+1:]
			break
		}
	}
	os.Exit(probe.Main(args, os.Stdout, os.Stderr))
}

// TestMainSignalPrintsReport: SIGINT or SIGTERM during a long run ends it
// within a bounded time, even with connections hanging on a silent target,
// and the report of the connections done is printed, with an exit code
// that says the run was interrupted (128 plus the signal) whatever the
// thresholds; missed thresholds are said. Before, SIGTERM killed the probe
// without a report.
func TestMainSignalPrintsReport(t *testing.T) {
	shared := startFarm(t, 2, true)
	alone := startFarm(t, 2, false)
	silent := nettest.Silent(t)
	for _, tc := range []struct {
		name    string
		sig     syscall.Signal
		targets []string
		args    []string
		code    int
		stderr  []string
		atLeast int // connections before the signal
	}{
		{"SIGINT", syscall.SIGINT, shared.addrs, nil, 130,
			[]string{"interrupted by SIGINT after "}, 10},
		{"SIGTERM", syscall.SIGTERM, shared.addrs, nil, 143,
			[]string{"interrupted by SIGTERM after "}, 10},
		// A run that meets its thresholds so far is still not a pass.
		{"SIGTERMThresholdsMet", syscall.SIGTERM, shared.addrs, []string{"-min-resumption", "0.9"}, 143,
			[]string{"interrupted by SIGTERM after "}, 10},
		{"SIGTERMThresholdMissed", syscall.SIGTERM, alone.addrs, []string{"-min-resumption", "0.99"}, 143,
			[]string{"interrupted by SIGTERM after ", "so far, resumption "}, 10},
		// Connections to a target that never answers are abandoned at
		// once, not waited out for their 30 s timeout (each client ends
		// up waiting on one).
		{"SIGTERMWithHungConnections", syscall.SIGTERM, []string{shared.addrs[0], silent}, []string{"-pick", "roundrobin", "-c", "4"}, 143,
			[]string{"interrupted by SIGTERM after "}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"-test.run=^TestMainProcess$", "--",
				"-targets", strings.Join(tc.targets, ","), "-d", "1m", "-rate", "200", "-timeout", "30s",
				"-tls", "1.2", "-insecure", "-json"}, tc.args...)
			f := shared
			if tc.targets[0] == alone.addrs[0] {
				f = alone
			}
			// The connections of the subtests before end with their
			// process; wait for the servers to see them all end, so that
			// none is counted as this subtest's.
			deadline := time.Now().Add(10 * time.Second)
			for f.open() > 0 {
				if time.Now().After(deadline) {
					t.Fatalf("%d connections of the subtests before still open on the servers after 10 s", f.open())
				}
				time.Sleep(5 * time.Millisecond)
			}
			seen := f.ended()
			cmd := exec.Command(os.Args[0], args...)
			cmd.Env = append(os.Environ(), mainEnv+"=1")
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan struct{})
			go func() { cmd.Wait(); close(exited) }()
			defer func() {
				select {
				case <-exited:
				default:
					cmd.Process.Kill()
					<-exited
				}
			}()
			// Signal once the probe has finished some connections: it is
			// then well into its run, and the report must count them. A
			// handshake the server completed is not enough: the probe may
			// still be reading the server's line, and abandons that
			// connection at the signal, uncounted. The probe closes a
			// connection only once it has read the line.
			deadline = time.Now().Add(10 * time.Second)
			for f.ended() < seen+tc.atLeast {
				if time.Now().After(deadline) {
					t.Fatalf("the probe finished %d connections in 10 s; stderr %s", f.ended()-seen, stderr.String())
				}
				time.Sleep(20 * time.Millisecond)
			}
			sent := time.Now()
			cmd.Process.Signal(tc.sig)
			select {
			case <-exited:
			case <-time.After(5 * time.Second):
				t.Fatalf("still running 5 s after %v", tc.sig)
			}
			took := time.Since(sent)
			t.Logf("exited %v after %v", took, tc.sig)
			if took > 2*time.Second {
				t.Errorf("exited %v after %v, want at once", took, tc.sig)
			}
			if code := cmd.ProcessState.ExitCode(); code != tc.code {
				t.Errorf("exit code %d (%v), want %d; stderr %q", code, cmd.ProcessState, tc.code, stderr.String())
			}
			var rep probe.Report
			if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
				t.Fatalf("no report: %v in %q; stderr %q", err, stdout.String(), stderr.String())
			}
			checkSums(t, &rep)
			if rep.Total.Connections < tc.atLeast || rep.Total.Failed != 0 || rep.Elapsed >= time.Minute {
				t.Errorf("report of %d connections (%d failed: %v) in %v; want at least %d, none failed, less than the minute",
					rep.Total.Connections, rep.Total.Failed, rep.Total.Errors, rep.Elapsed, tc.atLeast)
			}
			lines := strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n")
			if len(lines) != len(tc.stderr) {
				t.Fatalf("stderr %q, want %d lines", stderr.String(), len(tc.stderr))
			}
			for i, want := range tc.stderr {
				if !strings.HasPrefix(lines[i], "tlsfarm probe: "+want) {
					t.Errorf("stderr line %q, want it to begin %q", lines[i], "tlsfarm probe: "+want)
				}
			}
		})
	}
}
