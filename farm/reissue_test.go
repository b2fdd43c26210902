package farm_test

import (
	"context"
	"crypto/tls"
	"strings"
	"sync/atomic"
	"testing"
	"time"

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

// TestTLS12RoamingSharesOneSession: a TLS 1.2 client that roams over three
// nodes resumes every time, on whichever node, and the farm stores and
// shares its session once: each resumption keeps the session under a
// reissued ticket, which every node opens (broadcast and store-only, with
// write-through).
func TestTLS12RoamingSharesOneSession(t *testing.T) {
	url := redistest.URL(t)
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			ms, _ := farmtest.Start(t, 3, &farmtest.Options{NewTransport: redisTransport(url), Mode: mode, WriteThrough: true})
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
			for _, m := range ms {
				reissued += farmtest.Counter(m.Cache.Metrics(), "tlsfarm_cache_reissued_total")
				writes += farmtest.Counter(m.Node.Metrics(), "tlsfarm_farm_store_writes_total")
				published += farmtest.Counter(m.Node.Metrics(), "tlsfarm_farm_published_total", "kind", "session")
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
			ids := newSessions(ms[0].Cache)
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
