package main

import (
	"crypto/tls"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestAdminBindFailureServesNothing: a daemon whose admin address is taken
// by another listener exits 1, naming admin.address, and its proxy
// listener never takes a connection: every address is bound before any
// is served. Before, the proxy's listeners were started first, and shut
// down (with no bound on the wait) when the admin bind failed, so clients
// that connected meanwhile reached a node that then exited. Clients dial
// the listener's address all through each start; the start is repeated,
// since the window was short.
func TestAdminBindFailureServesNothing(t *testing.T) {
	t.Parallel()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	const runs = 20
	for run := 0; run < runs; run++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		listen := l.Addr().String()
		l.Close()

		var connects, handshakes atomic.Int64
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					c, err := net.DialTimeout("tcp", listen, time.Second)
					if err != nil {
						continue
					}
					connects.Add(1)
					tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"})
					tc.SetDeadline(time.Now().Add(time.Second))
					if tc.Handshake() == nil {
						handshakes.Add(1)
					}
					tc.Close()
				}
			}()
		}
		code, _, stderr := runCmd(t, []string{"serve", "-listen", listen, "-admin", taken.Addr().String()})
		close(stop)
		wg.Wait()
		if code != 1 || !strings.Contains(stderr, "admin.address") {
			t.Fatalf("run %d: exit %d, stderr %q; want 1, naming admin.address", run, code, stderr)
		}
		if strings.Contains(stderr, "tlsfarm ready") {
			t.Errorf("run %d: the daemon said it was ready: %q", run, stderr)
		}
		if n := connects.Load(); n > 0 {
			t.Fatalf("run %d: the listener %s took %d connection(s) (%d TLS handshakes) before the admin bind failed", run, listen, n, handshakes.Load())
		}
		// Nothing holds the listener's address after the exit.
		if l, err := net.Listen("tcp", listen); err != nil {
			t.Errorf("run %d: the listener's address is held after the exit: %v", run, err)
		} else {
			l.Close()
		}
	}
}

// TestAdminOverlapNamedAlike: an admin address that overlaps a listener's
// without being the same (0.0.0.0:P and 127.0.0.1:P) is refused by check
// and by serve naming the same setting, the listener's: both bind the
// admin API's address first.
func TestAdminOverlapNamedAlike(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(l.Addr().String())
	l.Close()
	args := []string{"-listen", "127.0.0.1:" + port, "-admin", "0.0.0.0:" + port}
	for _, cmd := range []string{"check", "serve"} {
		code, _, stderr := runCmd(t, append([]string{cmd}, args...))
		if code != 1 || !strings.Contains(stderr, "listeners[0].address") {
			t.Errorf("%s: exit %d, stderr %q; want 1, naming listeners[0].address", cmd, code, stderr)
		}
	}
}
