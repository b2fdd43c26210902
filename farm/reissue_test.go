package farm_test

import (
	"context"
	"crypto/tls"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// issuedHere counts, over ms, the sessions their handshakes issued.
func issuedHere(ms []*farmtest.Member) *atomic.Int64 {
	var n atomic.Int64
	for _, m := range ms {
		m.Cache.AddHook(session.EventNew, func(ev session.Event) {
			if ev.Origin == session.OriginHandshake {
				n.Add(1)
			}
		})
	}
	return &n
}

// roomyWriteThrough gives a roaming test's nodes a write-through wait of
// a second: sharing is under test, not the wait's bounds. A client that
// reconnects at once to a peer resumes if the issuer's write or publish
// reaches the peer within the peer's LookupTimeout (the harness's 100 ms)
// while the session is young (WriteThroughTimeout); the issuer's batches
// go one at a time, so a slower path (a planted 300 ms delay before each
// publish) made a new session wait for the batch before it too: about
// 600 ms, and two thirds of the reconnections missed. TLS 1.3 makes a new
// session at every resumption, so its roaming tests need this as much:
// under that plant TestPeerSessionResumesOnOtherNode/broadcast/TLS1.3
// missed 62/300 with its 500 ms deadlines, TestLazyPeersRoam/TLS1.3 about
// 200/300 with the harness's; none of either with a second.
func roomyWriteThrough(c *farm.Config) {
	c.LookupTimeout = time.Second
	c.WriteThroughTimeout = time.Second
}

// TestTLS12RoamingSharesOneSession: a TLS 1.2 client that roams over three
// nodes resumes every time, on whichever node, and the farm stores and
// shares its session once: each resumption keeps the session under a
// reissued ticket, which every node opens (broadcast and store-only, with
// write-through).
func TestTLS12RoamingSharesOneSession(t *testing.T) {
	url := redistest.URL(t)
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			ms, _ := farmtest.Start(t, 3, &farmtest.Options{NewTransport: redisTransport(url), Mode: mode, WriteThrough: true,
				Tweak: roomyWriteThrough})
			issued := issuedHere(ms)
			ccfg := farmtest.Client(tls.VersionTLS12, &tlstest.SharedCache{})
			const attempts = 30
			failed, elsewhere := farmtest.Roam(t, ms, attempts, func(m *farmtest.Member) tls.ConnectionState {
				return tlstest.MustDial(t, m.Server.Addr, ccfg)
			})
			if failed > 0 || elsewhere < attempts/3 {
				farmtest.LogStats(t, ms)
				t.Fatalf("%d of %d resumptions failed, %d crossed nodes; want none and at least %d", failed, attempts, elsewhere, attempts/3)
			}
			var reissued, writes, published uint64
			count := func() {
				reissued, writes, published = 0, 0, 0
				for _, m := range ms {
					reissued += farmtest.Counter(m.Cache.Metrics(), "tlsfarm_cache_reissued_total")
					writes += farmtest.Counter(m.Node.Metrics(), "tlsfarm_farm_store_writes_total")
					published += farmtest.Counter(m.Node.Metrics(), "tlsfarm_farm_published_total", "kind", "session")
				}
			}
			// The publisher counts a write once its round trip is over,
			// which can be after the peers have the session and the
			// client has roamed (seen once: 0 writes counted).
			deadline := time.Now().Add(2 * time.Second)
			for count(); writes == 0 && time.Now().Before(deadline); count() {
				time.Sleep(10 * time.Millisecond)
			}
			if n := issued.Load(); n != 1 || reissued != attempts {
				t.Fatalf("%d sessions issued and %d tickets reissued for 1 full handshake and %d resumptions; want 1 and %d", n, reissued, attempts, attempts)
			}
			if writes != 1 || published > 1 {
				t.Fatalf("store writes %d, sessions published %d; want 1 and at most 1", writes, published)
			}
			farmtest.NoHandshakeErrors(t, ms)
		})
	}
}

// TestReissuedTicketOpenSSL: openssl s_client saves a TLS 1.2 session on
// n1 (-sess_out), resumes it on n2 and saves the reissued ticket n2 gives,
// which then resumes on n3 and n1; revoked on one node, it resumes nowhere.
func TestReissuedTicketOpenSSL(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			ms, _ := farmtest.Start(t, 3, &farmtest.Options{NewTransport: redisTransport(url), Mode: mode, WriteThrough: true, CloseServer: true})
			issued := issuedHere(ms)
			ids := farmtest.NewSessions(ms[0].Cache)
			sess := tlstest.SessionFile(t)
			resumed := func(m *farmtest.Member, args ...string) bool {
				args = append([]string{"-tls1_2", "-servername", "localhost", "-sess_in", sess}, args...)
				return strings.Contains(tlstest.OpenSSL(t, m.Server.Addr, args...), "Reused, ")
			}
			tlstest.OpenSSL(t, ms[0].Server.Addr, "-tls1_2", "-servername", "localhost", "-sess_out", sess)
			if len(ids()) != 1 {
				t.Fatalf("n1 issued %d sessions, want 1", len(ids()))
			}
			id := ids()[0]
			waitStored(t, ms[0], id)
			if !resumed(ms[1], "-sess_out", sess) {
				farmtest.LogStats(t, ms)
				t.Fatal("openssl's saved session did not resume on n2")
			}
			if n := farmtest.Counter(ms[1].Cache.Metrics(), "tlsfarm_cache_reissued_total"); n != 1 {
				t.Fatalf("n2 reissued %d tickets, want 1", n)
			}
			for _, m := range []*farmtest.Member{ms[2], ms[0]} {
				if !resumed(m) {
					farmtest.LogStats(t, ms)
					t.Fatalf("the ticket n2 reissued did not resume on %s", m.Name)
				}
			}
			if n := issued.Load(); n != 1 {
				t.Fatalf("%d sessions issued, want 1", n)
			}
			if ok, err := ms[2].Node.Revoke(context.Background(), id); err != nil || !ok {
				t.Fatalf("Revoke = %t, %v", ok, err)
			}
			for _, m := range ms {
				farmtest.Eventually(t, 5*time.Second, m.Name+" refuses the revoked session", func() bool {
					return !resumed(m)
				})
			}
		})
	}
}

// TestReissuedTicketThroughStoreRestart: a TLS 1.2 client holds the ticket
// n2 reissued for n1's session. With the store killed, the ticket still
// resumes on n3 (every node holds the session from the bus); revoked on n1
// meanwhile, once the store is back (restarted empty) it resumes on no node,
// nor on one that joins afterwards.
func TestReissuedTicketThroughStoreRestart(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	o := farmtest.Options{NewTransport: redisTransport(srv.URL()), WriteThrough: true,
		Tweak: func(c *farm.Config) { c.OpTimeout = 300 * time.Millisecond }}
	ms, name := farmtest.Start(t, 3, &o)
	ids := farmtest.NewSessions(ms[0].Cache)
	shared := &tlstest.SharedCache{}
	tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tls.VersionTLS12, shared))
	id := ids()[0]
	for _, m := range ms[1:] {
		farmtest.Eventually(t, 5*time.Second, m.Name+" holds the session", func() bool {
			_, ok := m.Cache.GetBuffer(id, nil)
			return ok
		})
	}
	if !tlstest.MustDial(t, ms[1].Server.Addr, farmtest.Client(tls.VersionTLS12, shared)).DidResume {
		t.Fatal("n2 did not resume n1's session")
	}
	if n := farmtest.Counter(ms[1].Cache.Metrics(), "tlsfarm_cache_reissued_total"); n != 1 {
		t.Fatalf("n2 reissued %d tickets, want 1", n)
	}
	cs, _ := shared.Get("")
	frozen := &tlstest.FrozenCache{} // the reissued ticket, from now on
	frozen.Put("", cs)
	client := farmtest.Client(tls.VersionTLS12, frozen)

	srv.Kill()
	if !tlstest.MustDial(t, ms[2].Server.Addr, client).DidResume {
		t.Fatal("with the store down, the reissued ticket did not resume on n3")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	st, err := ms[0].Node.RevokeSession(ctx, id)
	cancel()
	if err != nil || st != farm.RevokePending {
		t.Fatalf("RevokeSession with Redis down = %v, %v; want pending", st, err)
	}
	srv.Restart()
	for _, m := range ms {
		farmtest.Eventually(t, 10*time.Second, m.Name+" refuses the revoked session after Redis returns", func() bool {
			_, ok := m.Cache.GetBuffer(id, nil)
			return !ok
		})
	}
	for _, m := range ms {
		if tlstest.MustDial(t, m.Server.Addr, client).DidResume {
			t.Fatalf("%s resumed the reissued ticket of a revoked session", m.Name)
		}
	}
	late := farmtest.Join(t, "late", name, o)
	farmtest.WaitConnected(t, late)
	if tlstest.MustDial(t, late.Server.Addr, client).DidResume {
		t.Fatal("a node that joined after the revocation resumed the reissued ticket")
	}
}
