package farm_test

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestFirstWriteHeldPastCutMark is TestFirstWriteLandsAfterCut with n1's
// first write of S held in flight for longer than what is left of S's
// grace: n2's cut finds no record and leaves its cut mark, which lapses
// with the cut, before n1's write lands. The write must not put S back
// whole then, and a node that never held S (n3, joining afterwards) must
// not resume it: n1 stays deaf to the cut (its bus path frozen), so
// nothing would write S again.
func TestFirstWriteHeldPastCutMark(t *testing.T) {
	t.Parallel()
	for _, store := range []string{"redis", "nats"} {
		t.Run(store, func(t *testing.T) {
			t.Parallel()
			testFirstWriteHeldPastCutMark(t, store)
		})
	}
}

func testFirstWriteHeldPastCutMark(t *testing.T, store string) {
	const grace = 1500 * time.Millisecond
	f := startLateWriteFarm(t, store, func(c *session.Config) { c.ResumeGrace = grace })
	n1, n2, g1, g2, proxy := f.ms[0], f.ms[1], f.stores[0], f.stores[1], f.proxy
	stored := f.stored
	time.Sleep(1200 * time.Millisecond) // past the re-sends asked for at start

	// n1 issues S; its first store write is held in flight, the bus
	// brings S to n2.
	c, id := f.issueHeldS()

	// The client resumes S on n2, whose cut finds no record and leaves
	// its mark; n1 does not hear of it.
	proxy.Freeze()
	t.Cleanup(proxy.Thaw)
	if !tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
		t.Fatal("S did not resume on n2")
	}
	cutAt := time.Now()
	farmtest.Eventually(t, 5*time.Second, "n2 wrote its cut of S", func() bool { return g2.touched(id) })
	if stored(id) {
		t.Fatal("the store holds S before n1's first write landed")
	}

	// Past S's grace (the cut mark lapsed with it), n1's first write
	// lands, S whole.
	time.Sleep(time.Until(cutAt.Add(grace + 500*time.Millisecond)))
	writes := farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_store_writes_total")
	g1.setHeld(false)
	farmtest.Eventually(t, 5*time.Second, "n1's first write of S landed", func() bool {
		return farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_store_writes_total") > writes
	})
	if stored(id) {
		t.Error("n1's first write, held past S's grace, put S in the store after n2's cut mark lapsed")
	}

	// n1 still deaf to the cut: a node that never held S loads it from
	// the store, and must not resume it.
	if _, ok := lookup(n1.Cache, id); !ok {
		t.Fatal("n1 let S go: it heard of the cut, and the test did not keep the window open")
	}
	if f.n3Resumes(c) {
		t.Error("n3 resumed S past its grace, from n1's first write that landed after n2's cut mark lapsed")
	}
}
