package farmtest

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// GraceCutWhileDeliveryLags checks the grace cut on a node whose bus
// delivery lags by less than MaxDeliveryLag but by more than the caches'
// ResumeGrace. n2 holds a session S and a control session C, both issued
// on n1 (TLS 1.3) and received by broadcast; then n2's bus path (a
// connection of its own, through a proxy; its store another, through a
// second proxy) lags by a second each way, so that its delivery lags
// about two seconds: within the nodes' MaxDeliveryLag (5 s), past the
// grace (300 ms). S is resumed on n1, which cuts it to the grace, and
// once the grace is over, before the cut's message can have reached n2 by
// its bus, S is presented to n2: n2 must not resume it (it asks its
// store, which holds the cut), and still resumes C, once its store
// confirms C (its hit gated too). Before the hit gate took the grace as
// its bound when it is the shorter, n2 resumed both from the copies it
// held, S past its grace.
func GraceCutWhileDeliveryLags(t *testing.T, server func(*testing.T) Server) {
	const (
		grace   = 300 * time.Millisecond
		latency = time.Second
		maxLag  = 5 * time.Second
	)
	srv := server(t)
	px, spx := nettest.NewProxy(t, srv.Addr), nettest.NewProxy(t, srv.Addr) // n2's bus path, its store's
	ms, _ := Start(t, 2, &Options{
		Mode: farm.Broadcast, WriteThrough: true,
		NewTransport: SplitPaths(srv, 2, px.Addr, spx.Addr),
		TweakCache:   func(c *session.Config) { c.ResumeGrace = grace },
		Tweak: func(c *farm.Config) {
			c.MaxDeliveryLag = maxLag
			// n2 must count its bus up while it lags (see
			// heldRevokedWhileDeliveryLags).
			c.ProbeTimeout = 10 * time.Second
			c.LookupTimeout = time.Second
			c.TallyInterval = -1
		},
	})
	n1, n2 := ms[0], ms[1]
	WaitRevocationsKnown(t, ms...)
	t.Cleanup(func() { px.SetLatency(0) }) // before the nodes close
	lag := deliveryLag(n2)
	Eventually(t, 5*time.Second, "n2's delivery was marked", func() bool { return lag() < grace })

	dial := func(m *Member, c tls.ClientSessionCache) bool {
		t.Helper()
		cs, err := tlstest.DialWithin(m.Server.Addr, Client(tls.VersionTLS13, c), 20*time.Second)
		if err != nil {
			t.Fatalf("a dial to %s: %v (the server's failed handshakes: %v)", m.Name, err, m.Server.HandshakeErrors())
		}
		return cs.DidResume
	}
	s, c, _, _ := issueHeld(t, n1, n2, dial)

	px.SetLatency(latency)
	Eventually(t, 5*time.Second, "n2's delivery lags past the grace", func() bool { return lag() > 3*grace })
	if !dial(n1, s) {
		t.Fatal("n1 did not resume S")
	}
	resumed := time.Now()
	time.Sleep(grace + 150*time.Millisecond)
	if l := lag(); l > maxLag {
		t.Fatalf("n2's delivery lags %v, past MaxDeliveryLag %v: the case needs it within", l, maxLag)
	}
	if dial(n2, s) {
		t.Errorf("n2 resumed S %v after n1 resumed it (grace %v), its delivery %v behind (MaxDeliveryLag %v)",
			time.Since(resumed).Round(time.Millisecond), grace, lag().Round(time.Millisecond), maxLag)
	}
	if !dial(n2, c) {
		t.Errorf("n2 did not resume C (not resumed before), its delivery %v behind", lag().Round(time.Millisecond))
	}
	gated := func(result string) uint64 {
		return Counter(n2.Node.Metrics(), "tlsfarm_farm_gated_hits_total", "result", result)
	}
	// S's hit is gated (retired) unless a stall held its handshake
	// until the cut's message arrived; C's, whatever the timing.
	r, cf := gated("retired"), gated("confirmed")
	t.Logf("n2's gated hits: retired %d, confirmed %d, store_error %d, cut_off %d", r, cf, gated("store_error"), gated("cut_off"))
	if cf == 0 {
		t.Error("n2 resumed C without asking its store, its delivery lagging past the grace")
	}
}
