package farm_test

import (
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
)

// TestHealRetriedWhileGapOpen: n1's bus and store, each on a path of its
// own, are cut; its bus comes back first, so that the heal its
// reconnection asks for fails on the store, still cut, and leaves the gap
// open (n1's hit gate on: every hit costs a store read). Once the store's
// path is back, a heal must read the revocations within healRetried,
// although HealInterval is the default 30 s. Before, the healer tried
// again with backoff only until the revocations were first known, and
// after that a heal that failed waited for the next tick.
func TestHealRetriedWhileGapOpen(t *testing.T) {
	t.Parallel()
	const healRetried = 5 * time.Second
	srv := sharedRedis(t)
	px, spx := nettest.NewProxy(t, srv.Addr), nettest.NewProxy(t, srv.Addr) // n1's bus path, its store's
	ms, _ := farmtest.Start(t, 2, &farmtest.Options{
		Mode: farm.Broadcast, WriteThrough: true,
		NewTransport: farmtest.SplitPaths(srv, 1, px.Addr, spx.Addr),
		Tweak: func(c *farm.Config) {
			c.OpTimeout = time.Second
			c.TallyInterval = -1
		},
	})
	farmtest.WaitConnected(t, ms...)
	farmtest.WaitRevocationsKnown(t, ms...)
	n1 := ms[0]
	heals := func() uint64 {
		ss := n1.Node.Metrics()
		return farmtest.Counter(ss, "tlsfarm_farm_tombstone_reads_total", "result", "read") +
			farmtest.Counter(ss, "tlsfarm_farm_tombstone_reads_total", "result", "unchanged")
	}

	restored := false
	t.Cleanup(func() {
		if !restored {
			px.Restore()
			spx.Restore()
		}
	})
	px.Cut()
	spx.Cut()
	farmtest.Eventually(t, 10*time.Second, "n1 finds the farm gone", func() bool { return !n1.Node.Connected() })
	px.Restore()
	farmtest.Eventually(t, 20*time.Second, "n1's bus back", func() bool { return n1.Node.Connected() })
	// The heal the reconnection asked for fails on the cut store (within
	// OpTimeout), and so may the next.
	time.Sleep(3 * time.Second)
	if f := farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_tombstone_read_failures_total"); f == 0 {
		t.Errorf("no failed heal counted while n1's bus was back and its store cut")
	}
	before := heals()
	spx.Restore()
	restored = true
	back := time.Now()
	farmtest.Eventually(t, 20*time.Second, "a heal of n1 reads the revocations", func() bool { return heals() > before })
	if took := time.Since(back); took > healRetried {
		t.Errorf("a heal of n1 read the revocations %v after its store came back; want within %v", took.Round(time.Millisecond), healRetried)
	} else {
		t.Logf("a heal of n1 read the revocations %v after its store came back", took.Round(time.Millisecond))
	}
}
