package farm_test

import (
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
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
	g := newGateFarm(t, gateFarmOptions{
		MaxLag: maxLag,
		Tweak: func(c *farm.Config) {
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
		},
	})
	n2 := g.n2
	g.issue(1)
	s := g.sessions[0]
	// n1 revokes S: the store takes it, n1's bus does not.
	g.revokeWhileBusFrozen()
	g.lagDelivery(busSlow)

	// n2's next store write goes unanswered; its probes (PING) are
	// answered.
	if err := g.admin.Do(t.Context(), "CLIENT", "PAUSE", "60000", "WRITE").Err(); err != nil {
		t.Fatal(err)
	}
	writeErrs := func() uint64 { return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_store_write_errors_total") }
	before := writeErrs()
	g.dial(n2, &tlstest.FrozenCache{})
	farmtest.Eventually(t, 10*time.Second, "n2's store write failed", func() bool { return writeErrs() > before })
	if !n2.Node.StoreFailing() {
		t.Fatal("n2 does not count its store failing after a failed write")
	}
	probes := n2.Node.StoreProbeAnswered()

	// The gate's read goes unanswered within LookupTimeout; the probes
	// are answered.
	g.store2.SetLatency(storeSlow)
	for i := range 2 {
		if g.dial(n2, s) {
			t.Errorf("n2 resumed S (dial %d), revoked on n1, while its store's probes were answered", i+1)
			break
		}
	}
	farmtest.Eventually(t, 10*time.Second, "n2's store probe answered through the slow path", func() bool {
		return n2.Node.StoreProbeAnswered() > probes+1
	})
	t.Logf("n2's gated hits: %s", g.gatedCounts())
	if n := g.gated("cut_off"); n != 0 {
		t.Errorf("n2's gate counted itself cut off %d times while its store's probes were answered", n)
	}
}
