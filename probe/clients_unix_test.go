//go:build unix

package probe_test

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/probe"
)

// openFiles returns the process's open-file limit.
func openFiles(t *testing.T) int {
	t.Helper()
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		t.Skip(err)
	}
	if l.Cur > 1<<24 {
		t.Skipf("open-file limit %d: too many clients to try", l.Cur)
	}
	return int(l.Cur)
}

// TestTooManyClientsRefused: more clients than the open-file limit allows
// sockets for are refused before any connection, with an error that says
// why and what to do; fewer run. Before, -c 100000 -d 5s here (limit
// 20000) started every client: the run took 16 s, 2599 connections timed
// out and were counted against the server, 91567 clients never connected,
// and the report said "from 100000 clients".
func TestTooManyClientsRefused(t *testing.T) {
	limit := openFiles(t)
	f := startFarm(t, 1, true)
	for _, tc := range []struct {
		name        string
		clients     int
		connections int
		duration    time.Duration
		refused     bool
	}{
		{"Duration/Beyond", limit + 1, 0, time.Second, true},
		{"Duration/AtLimit", limit, 0, time.Second, true},
		{"Duration/Few", 4, 0, 200 * time.Millisecond, false},
		{"Connections/Beyond", limit + 1, limit + 1, 0, true},
		// Clients beyond the connections are not started.
		{"Connections/FewerThanClients", 100 * limit, 3, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(f.order())
			cfg := f.config()
			cfg.Concurrency, cfg.Connections, cfg.Duration = tc.clients, tc.connections, tc.duration
			rep, err := probe.Run(context.Background(), cfg, nil)
			if tc.refused {
				if err == nil || rep != nil || !strings.Contains(err.Error(), "open-file limit of "+strconv.Itoa(limit)) {
					t.Fatalf("Run: %v (report %v), want a refusal that names the open-file limit %d", err, rep != nil, limit)
				}
				if n := len(f.order()) - before; n != 0 {
					t.Errorf("refused, but the server saw %d connections", n)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				if rep.Total.Connections == 0 || rep.Total.Failed != 0 || rep.Concurrency > tc.clients {
					t.Errorf("%d connections, %d failed (%v), %d clients", rep.Total.Connections, rep.Total.Failed, rep.Total.Errors, rep.Concurrency)
				}
			}

			// The command line says the same, with exit 2.
			args := []string{"-targets", f.addrs[0], "-insecure", "-c", strconv.Itoa(tc.clients)}
			if tc.connections > 0 {
				args = append(args, "-n", strconv.Itoa(tc.connections))
			} else {
				args = append(args, "-d", tc.duration.String())
			}
			var stdout, stderr bytes.Buffer
			code := probe.Main(args, &stdout, &stderr)
			if !tc.refused {
				if code != 0 {
					t.Errorf("exit %d; stderr %q", code, stderr.String())
				}
				return
			}
			want := "tlsfarm probe: -c " + strconv.Itoa(tc.clients) + ": "
			if code != 2 || !strings.HasPrefix(stderr.String(), want) || !strings.Contains(stderr.String(), "ulimit -n") || stdout.Len() != 0 {
				t.Errorf("exit %d, stderr %q, stdout %q; want 2 and a line that begins %q and says ulimit -n", code, stderr.String(), stdout.String(), want)
			}
		})
	}
}
