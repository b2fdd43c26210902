package farm_test

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
)

// TestGateReadLostConnectionReadsAgain: a broadcast, write-through farm of
// two nodes on a Redis server of the test's own, n2's bus and its store
// each on a proxy. n2 issues S; n2's bus freezes, so that its hits are
// gated, and n1 revokes S, reported applied. Then the one connection
// n2's gated read of S's marks is on is lost (the store's proxy holds the
// read, then closes its connections and goes on taking new ones): the
// store is there, on a new connection. Before, the read's lost
// connection (EOF) counted n2 cut off from its store, and S resumed
// unchecked; now the gate reads again, finds the mark, and S does not
// resume.
func TestGateReadLostConnectionReadsAgain(t *testing.T) {
	t.Parallel()
	const maxLag = 150 * time.Millisecond
	srv := redistest.Start(t)
	pxBus, pxStore := nettest.NewProxy(t, srv.Addr()), nettest.NewProxy(t, srv.Addr())
	ms, _ := farmtest.Start(t, 2, &farmtest.Options{
		Mode: farm.Broadcast, WriteThrough: true,
		NewTransport: farmtest.SplitPaths(redisServer(srv.URL()), 2, pxBus.Addr, pxStore.Addr),
		Tweak: func(c *farm.Config) {
			c.MaxDeliveryLag = maxLag
			c.LookupTimeout = 2 * time.Second
			// The frozen bus and the held read are not an outage
			// for as long as the test takes.
			c.ProbeTimeout = 10 * time.Second
			// No probe of the store while its read is held: the
			// probe's connection, lost too, would count the store
			// unanswered, and the hit skip the read.
			c.ProbeInterval = time.Minute
			c.TallyInterval = -1
		},
	})
	n1, n2 := ms[0], ms[1]
	farmtest.WaitConnected(t, ms...)
	farmtest.WaitRevocationsKnown(t, ms...)
	t.Cleanup(func() { pxBus.Thaw(); pxBus.Restore(); pxStore.Thaw(); pxStore.Restore() })

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

	pxBus.Freeze()
	marker := n2.Bus.(transport.DeliveryMarker)
	farmtest.Eventually(t, 10*time.Second, "n2's delivery lags", func() bool {
		d := marker.DeliveredThrough()
		return d.IsZero() || time.Since(d) > 2*maxLag
	})
	if st, err := n1.Node.RevokeSession(t.Context(), sid); err != nil || st != farm.RevokeApplied {
		t.Fatalf("RevokeSession = %v, %v", st, err)
	}
	gated := func(result string) uint64 {
		return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_gated_hits_total", "result", result)
	}

	pxStore.Freeze()
	held := pxStore.Holding()
	resumed := make(chan bool, 1)
	go func() {
		r, err := tlstest.Dial(n2.Server.Addr, farmtest.Client(tls.VersionTLS13, s))
		resumed <- err == nil && r.DidResume
	}()
	farmtest.Eventually(t, 10*time.Second, "n2's gated read is held", func() bool { return pxStore.Holding() > held })
	pxStore.Drop()
	if <-resumed {
		t.Errorf("n2 resumed S, revoked on n1 (applied), when the connection of its gated read was lost with the store there")
	}
	t.Logf("n2's gated hits: confirmed %d, revoked %d, store_error %d, cut_off %d",
		gated("confirmed"), gated("revoked"), gated("store_error"), gated("cut_off"))
}
