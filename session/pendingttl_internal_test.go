package session

import (
	"bufio"
	"crypto/tls"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
)

// pendingVersions are the TLS versions the pendingTTL tests run under.
var pendingVersions = []struct {
	name string
	v    uint16
}{{"TLS1.2", tls.VersionTLS12}, {"TLS1.3", tls.VersionTLS13}}

// pendingLen returns how many claims wait for HandshakeComplete.
func pendingLen(c *Cache) int {
	n := 0
	c.pending.Range(func(any, any) bool { n++; return true })
	return n
}

// claimsLen returns how many single-use claims c holds.
func claimsLen(c *Cache) int {
	c.life.mu.Lock()
	defer c.life.mu.Unlock()
	return len(c.life.claims)
}

// waitSettled waits until c holds no single-use claim.
func waitSettled(t *testing.T, c *Cache) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for claimsLen(c) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d single-use claims still held past pendingTTL", claimsLen(c))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// dialOpen dials addr over TCP, completes the handshake, reads the server's
// line, and returns the connection still open.
func dialOpen(t *testing.T, addr string, cfg *tls.Config) *tls.Conn {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
		c.Close()
		t.Fatal(err)
	}
	return c
}

// withoutContext wraps cfg, which Install configured, in a config whose
// GetConfigForClient hands the installed one a copy of the hello without
// its handshake context, as a server that rebuilds the hello does: the
// claim of such a handshake waits for HandshakeComplete or pendingTTL only.
func withoutContext(cfg *tls.Config) *tls.Config {
	return &tls.Config{GetConfigForClient: func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
		return cfg.GetConfigForClient(&tls.ClientHelloInfo{
			CipherSuites: hi.CipherSuites, ServerName: hi.ServerName,
			SupportedCurves: hi.SupportedCurves, SupportedPoints: hi.SupportedPoints,
			SignatureSchemes: hi.SignatureSchemes, SupportedProtos: hi.SupportedProtos,
			SupportedVersions: hi.SupportedVersions, Extensions: hi.Extensions,
			Conn: hi.Conn,
		})
	}}
}

// TestPendingTTLConsumesResumedClaim: a server that reports
// (HandshakeComplete) resumes a single-use session S on a connection it
// keeps open, and never reports that handshake. Once pendingTTL (shortened
// here) has passed, the claim is settled as used: S must not resume for a
// second client presenting the same ticket. Before that, a resumption that
// the client aborted, whose connection the server closed, is released at
// pendingTTL (S then resumes, once). Both for a claim that sweepPending
// settles (the handshake has a context, whose end leaves a resumed
// handshake on an open connection to wait for its report) and for one
// whose handshake has no context (a timer of its own).
func TestPendingTTLConsumesResumedClaim(t *testing.T) {
	t.Parallel()
	for _, path := range []string{"sweep", "no context"} {
		for _, tv := range pendingVersions {
			t.Run(path+"/"+tv.name, func(t *testing.T) {
				t.Parallel()
				cfg := &Config{SingleUse: true, pendingTTL: 300 * time.Millisecond}
				if path == "sweep" {
					cfg.SweepInterval = 50 * time.Millisecond
				}
				c, err := New(cfg)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				cert, pool := tlstest.SharedCert()
				scfg := &tls.Config{Certificates: []tls.Certificate{cert}}
				c.Install(scfg)
				if path == "no context" {
					scfg = withoutContext(scfg)
				}
				srv := tlstest.Serve(t, "n1", scfg, func(conn *tls.Conn) {
					if !conn.ConnectionState().DidResume {
						c.HandshakeComplete(conn) // the server reports, but not resumptions
					}
				})
				frozen := &tlstest.FrozenCache{}
				client := func() *tls.Config { return tlstest.ClientConfig(pool, "localhost", tv.v, frozen) }
				if tlstest.MustDial(t, srv.Addr, client()).DidResume {
					t.Fatal("the first handshake resumed")
				}

				bad := client()
				var badResumed atomic.Bool
				bad.VerifyConnection = func(cs tls.ConnectionState) error {
					badResumed.Store(cs.DidResume)
					return errors.New("abort")
				}
				if _, err := tlstest.Dial(srv.Addr, bad); err == nil {
					t.Fatal("the aborting client's handshake succeeded")
				}
				if !badResumed.Load() {
					t.Fatal("the aborting client's handshake did not resume S")
				}
				waitSettled(t, c)
				if got := c.life.released.Load(); got != 1 {
					t.Fatalf("%d claims released after the aborted resumption, want 1", got)
				}

				first := dialOpen(t, srv.Addr, client())
				defer first.Close()
				if !first.ConnectionState().DidResume {
					t.Fatal("S did not resume after the aborted resumption released it")
				}
				waitSettled(t, c) // pendingTTL has passed
				if tlstest.MustDial(t, srv.Addr, client()).DidResume {
					t.Fatal("S resumed a second time: the unreported resumption's claim was released at pendingTTL")
				}
				if got := c.life.released.Load(); got != 1 {
					t.Fatalf("%d claims released, want 1 (the aborted resumption's)", got)
				}
				if c.holds(idOf(t, frozen)) {
					t.Fatal("S is still held after its claim was settled as used")
				}
				if n := pendingLen(c); n != 0 {
					t.Fatalf("%d claims still wait for HandshakeComplete past pendingTTL", n)
				}
			})
		}
	}
}

// idOf returns the ID of the session the frozen client cache holds.
func idOf(t *testing.T, f *tlstest.FrozenCache) ID {
	t.Helper()
	cs, ok := f.Get("")
	if !ok {
		t.Fatal("the client holds no session")
	}
	identity, _, err := cs.ResumptionState()
	if err != nil {
		t.Fatal(err)
	}
	var id ID
	if len(identity) != len(id) {
		t.Fatalf("the client's ticket is %d bytes, not an ID", len(identity))
	}
	copy(id[:], identity)
	return id
}

// TestClaimExpiredBeforeResume: a handshake claims the single-use session S
// and then stalls before it resumes it (the server's own VerifyConnection
// is slow) past pendingTTL, which releases the claim; a second client then
// resumes S. The stalled handshake must not resume S as well when it goes
// on: it fails.
func TestClaimExpiredBeforeResume(t *testing.T) {
	t.Parallel()
	for _, tv := range pendingVersions {
		t.Run(tv.name, func(t *testing.T) {
			t.Parallel()
			c, err := New(&Config{SingleUse: true, SweepInterval: 50 * time.Millisecond, pendingTTL: 300 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			cert, pool := tlstest.SharedCert()
			var stalled atomic.Bool
			expired, goOn := make(chan struct{}), make(chan struct{})
			scfg := &tls.Config{Certificates: []tls.Certificate{cert},
				VerifyConnection: func(cs tls.ConnectionState) error {
					if cs.DidResume && stalled.CompareAndSwap(false, true) {
						deadline := time.Now().Add(5 * time.Second)
						for pendingLen(c) != 0 && time.Now().Before(deadline) {
							time.Sleep(10 * time.Millisecond)
						}
						close(expired)
						<-goOn
					}
					return nil
				}}
			c.Install(scfg)
			srv := tlstest.Serve(t, "n1", scfg, func(conn *tls.Conn) { c.HandshakeComplete(conn) })
			frozen := &tlstest.FrozenCache{}
			client := func() *tls.Config { return tlstest.ClientConfig(pool, "localhost", tv.v, frozen) }
			tlstest.MustDial(t, srv.Addr, client())

			type result struct {
				cs  tls.ConnectionState
				err error
			}
			slow := make(chan result, 1)
			go func() {
				cs, err := tlstest.Dial(srv.Addr, client())
				slow <- result{cs, err}
			}()
			select {
			case <-expired:
			case <-time.After(10 * time.Second):
				t.Fatal("the stalled handshake never reached VerifyConnection")
			}
			if pendingLen(c) != 0 {
				close(goOn)
				t.Fatal("the stalled handshake's claim did not expire")
			}
			second := tlstest.MustDial(t, srv.Addr, client()).DidResume
			close(goOn)
			r := <-slow
			resumed := r.err == nil && r.cs.DidResume
			if !second {
				t.Errorf("S did not resume once its stalled claim was released (the stalled handshake: resumed %t, err %v)", resumed, r.err)
			}
			if second && resumed {
				t.Fatal("S resumed twice: the stalled handshake resumed it after its claim had been released")
			}
			if tlstest.MustDial(t, srv.Addr, client()).DidResume {
				t.Fatal("S resumed after it was used")
			}
		})
	}
}
