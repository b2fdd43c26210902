package farm_test

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestGapSettledWhileRetirementWaitsForStore: n1's store path is slow (its
// store writes wait; the bus works) when it retires a session R that n2
// holds, and n2, a slow consumer on a real NATS server, loses the
// retirement's message (tallies off: the gap its subscription reports is
// all it learns). n2 settles the gap: it reconciles its cache with the
// store, which still holds R (n1's deletion waits), and asks its peers for
// what they hold. R's retirement is not held by n1 in that sense (no write
// of it failed), but its store write is not settled either: n1's answer
// must carry it, or n2 resumes R for as long as R lives. Before, n1
// answered with what it kept after failed writes only, and n2 held R on
// (a planted 300ms delay before each store write made
// TestNATSSlowConsumerSettledAsGap/store fail so).
func TestGapSettledWhileRetirementWaitsForStore(t *testing.T) {
	t.Parallel()
	natsURL := farmtest.ServerURL(t, "NATS", "TLSFARM_NATS_URL", "nats://127.0.0.1:4222")
	stall := stallTransport(natsURL, redistest.URL(t))
	var gates []*gatedStore
	nt := func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
		bus, st := stall(t, farmName)
		g := &gatedStore{Transport: st.(*redisbus.Transport)}
		gates = append(gates, g)
		return bus, g
	}
	o := &farmtest.Options{NewTransport: nt, Tweak: func(c *farm.Config) {
		c.TallyInterval = -1
		c.OpTimeout = 30 * time.Second // n1's held writes must not time out
	}}
	ms, _ := farmtest.Start(t, 2, o)
	n1, n2 := ms[0], ms[1]
	g1, s2 := gates[0], n2.Bus.(*stallBus)
	ids, cs := farmtest.Issue(t, n1, 2)
	r, rClient, controlClient := ids[0], cs[0], cs[1]
	for _, id := range ids {
		waitHeld(t, n2, id)
		waitStored(t, n1, id)
	}
	cuts := spyMessages(t, natsURL, s2.Subject(), farm.EnvTypeCut, n1.Node.Instance())
	done := func() uint64 {
		return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_reconciles_total", "result", "done")
	}
	reconciled := done()

	// n2 falls behind and nats.go drops what comes past its room, R's
	// retirement among it; n1's store writes wait.
	s2.hold()
	fillHeld(t, n1.Node, s2)
	g1.setHeld(true)
	defer g1.setHeld(false)
	before := s2.Dropped()
	if !n1.Cache.Retire(r, session.OriginAPI) {
		t.Fatal("n1 did not hold R")
	}
	farmtest.Eventually(t, setupWait, "n1's retirement reached the server", func() bool { return cuts.Load() > 0 })
	if err := s2.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	if s2.Dropped() <= before {
		t.Fatal("nats.go dropped nothing after n1's retirement: n2 may have it queued")
	}
	farmtest.Eventually(t, setupWait, "n1's store write to wait", func() bool { return g1.waiting.Load() > 0 })
	s2.release()

	farmtest.Eventually(t, setupWait, "n2 reconciled", func() bool { return done() > reconciled })
	waitStored(t, n2, r) // the reconcile found R there: n1's deletion waits
	farmtest.Eventually(t, setupWait, "n2 no longer holds R", func() bool {
		_, ok := lookup(n2.Cache, r)
		return !ok
	})
	if tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, rClient)).DidResume {
		t.Error("n2 resumed R, retired on n1, while n1's deletion waited")
	}

	g1.setHeld(false)
	waitUnstored(t, n2, r)
	if tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, rClient)).DidResume {
		t.Error("n2 resumed R after n1's deletion landed")
	}
	if !tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, controlClient)).DidResume {
		t.Error("the control session did not resume on n2")
	}
}
