package farm_test

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
)

// TestGateWriteUnansweredProbeAnswered: a broadcast, write-through farm of
// two nodes on a Redis server of the test's own, each node's bus on a
// proxy, n2's store on a third. n2 issues S. n1's bus freezes and n1
// revokes S: the store takes the revocation, n2 never hears of it. n2's
// bus path slows (its delivery lags past MaxDeliveryLag, its probe is
// answered), so that its hits are gated. Then the server holds every
// write (CLIENT PAUSE WRITE) and answers everything else: n2's store write
// of a new session goes unanswered until OpTimeout, while n2's store
// probes, begun after it, are answered. Then n2's store path slows past
// LookupTimeout (not past ProbeTimeout): the gate's read of S's marks goes
// unanswered, the probes are still answered. The store is there: n2 must
// not resume S (a full handshake, store_error).
//
// Before, a write that went unanswered counted the store silent whatever
// the probes found meanwhile, and a gated read that went unanswered then
// counted n2 cut off: S resumed unchecked (cut_off), as in a CI run of
// natsbus's TestClusterLaggingFollowerGateReadsLeader, where a write sent
// into frozen routes failed after the thaw. A proxy that freezes n2's
// store path cannot show it on Redis: the write then fails during the
// freeze, before any probe begun after it is answered (the store counts
// silent, rightly, until a write succeeds); so the server holds the write
// instead, as the routes held the NATS write. Nor does n2's bus freeze:
// the node probed its bus and its store in rounds, each waiting for both,
// so a frozen bus held the store's probes back for ProbeTimeout.
func TestGateWriteUnansweredProbeAnswered(t *testing.T) {
	t.Parallel()
	const (
		maxLag    = 100 * time.Millisecond
		lookup    = 150 * time.Millisecond
		busSlow   = 150 * time.Millisecond // each way: n2's delivery lags 2*busSlow
		storeSlow = 250 * time.Millisecond // each way: a read takes 2*storeSlow
		opTimeout = 2500 * time.Millisecond
	)
	srv := redistest.Start(t)
	admin := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { admin.Close() })
	bus1, bus2, store2 := nettest.NewProxy(t, srv.Addr()), nettest.NewProxy(t, srv.Addr()), nettest.NewProxy(t, srv.Addr())
	rs := redisServer(srv.URL())
	joined := 0
	ms, _ := farmtest.Start(t, 2, &farmtest.Options{
		Mode: farm.Broadcast, WriteThrough: true,
		NewTransport: func(tb testing.TB, farmName string) (transport.Bus, transport.Store) {
			joined++
			if joined == 1 {
				bus, _ := rs.Open(tb, bus1.Addr, farmName)
				_, store := rs.Open(tb, srv.Addr(), farmName)
				return bus, store
			}
			bus, _ := rs.Open(tb, bus2.Addr, farmName)
			_, store := rs.Open(tb, store2.Addr, farmName)
			return bus, store
		},
		Tweak: func(c *farm.Config) {
			c.MaxDeliveryLag = maxLag
			c.LookupTimeout = lookup
			// n1's frozen bus is not an outage for as long as the
			// test takes; n2's store probe through its slow path
			// (2*storeSlow) is answered.
			c.ProbeTimeout = 10 * time.Second
			c.ProbeInterval = 100 * time.Millisecond
			// A held write fails after a probe begun after it is
			// answered (within two rounds of probes, each
			// 2*storeSlow and an interval, n2's store path slow), and
			// soon enough.
			c.OpTimeout = opTimeout
			c.TallyInterval = -1
		},
	})
	n1, n2 := ms[0], ms[1]
	farmtest.WaitConnected(t, ms...)
	farmtest.WaitRevocationsKnown(t, ms...)
	// Before the nodes close (cleanups run last registered first).
	t.Cleanup(func() {
		admin.Do(context.Background(), "CLIENT", "UNPAUSE")
		bus1.Thaw()
		bus2.SetLatency(0)
		store2.SetLatency(0)
	})

	dial := func(m *farmtest.Member, c tls.ClientSessionCache) bool {
		t.Helper()
		return tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume
	}
	ids := farmtest.HandshakeSessions(n2.Cache)
	s := &tlstest.FrozenCache{}
	dial(n2, s)
	sid := ids()[0]
	farmtest.Eventually(t, 10*time.Second, "n1 holds S, and the store has it", func() bool {
		held := false
		for id := range n1.Cache.Snapshot(-1) {
			held = held || id == sid
		}
		return held && farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_store_writes_total") >= 1
	})

	// n1 revokes S: the store takes it, n1's bus does not.
	bus1.Freeze()
	marks := func() int {
		keys, _, err := admin.Scan(t.Context(), 0, "*"+farm.ChainMarkPrefix+"*", 1000).Result()
		if err != nil {
			t.Fatal(err)
		}
		return len(keys)
	}
	if n := marks(); n != 0 {
		t.Fatalf("%d chain marks in the store before the revocation", n)
	}
	rctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	st, err := n1.Node.RevokeSession(rctx, sid)
	cancel()
	if st != farm.RevokePending {
		t.Fatalf("RevokeSession = %v, %v; want pending (n1's bus frozen)", st, err)
	}
	farmtest.Eventually(t, 10*time.Second, "S's chain mark in the store", func() bool { return marks() == 1 })

	bus2.SetLatency(busSlow)
	marker := n2.Bus.(transport.DeliveryMarker)
	farmtest.Eventually(t, 10*time.Second, "n2's delivery lags", func() bool {
		d := marker.DeliveredThrough()
		return !d.IsZero() && time.Since(d) > 2*maxLag
	})

	// n2's next store write goes unanswered; its probes (PING) are
	// answered.
	if err := admin.Do(t.Context(), "CLIENT", "PAUSE", "60000", "WRITE").Err(); err != nil {
		t.Fatal(err)
	}
	writeErrs := func() uint64 { return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_store_write_errors_total") }
	before := writeErrs()
	dial(n2, &tlstest.FrozenCache{})
	farmtest.Eventually(t, 10*time.Second, "n2's store write failed", func() bool { return writeErrs() > before })
	if !n2.Node.StoreFailing() {
		t.Fatal("n2 does not count its store failing after a failed write")
	}
	probes := n2.Node.StoreProbeAnswered()

	// The gate's read goes unanswered within LookupTimeout; the probes
	// are answered.
	store2.SetLatency(storeSlow)
	gated := func(result string) uint64 {
		return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_gated_hits_total", "result", result)
	}
	for i := range 2 {
		if dial(n2, s) {
			t.Errorf("n2 resumed S (dial %d), revoked on n1, while its store's probes were answered", i+1)
			break
		}
	}
	farmtest.Eventually(t, 10*time.Second, "n2's store probe answered through the slow path", func() bool {
		return n2.Node.StoreProbeAnswered() > probes+1
	})
	t.Logf("n2's gated hits: confirmed %d, revoked %d, store_error %d, cut_off %d",
		gated("confirmed"), gated("revoked"), gated("store_error"), gated("cut_off"))
	if n := gated("cut_off"); n != 0 {
		t.Errorf("n2's gate counted itself cut off %d times while its store's probes were answered", n)
	}
}
