package farm_test

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestLateWriteReadBeforeRetireHeard is TestLateWriteReadBeforeCutHeard
// with a retirement in place of the cut: a cut to the past, which reaches
// the store as a deletion of the record. n1 issues S while its store path
// is down, and the bus brings S to n2 at once. n1's bus path is frozen,
// and the client resumes S on n2, whose store path fails in turn: n2
// keeps its cut of S for later. Past S's grace, n1's store path comes
// back, and n1 writes S again, read whole from its cache, the write held
// in flight. n2's store path comes back too, and n2 writes its cut, now a
// deletion (the grace is over), which finds no record. The child that
// carries the cut reaches n1, and n1's write lands; n1 deletes S again
// behind it, but that write is held in turn: until it lands, the store
// must not hold S. A node that never held S (n3, joining now) must not
// resume it.
func TestLateWriteReadBeforeRetireHeard(t *testing.T) {
	t.Parallel()
	for _, store := range []string{"redis", "nats"} {
		t.Run(store, func(t *testing.T) {
			t.Parallel()
			testLateWriteReadBeforeRetireHeard(t, store)
		})
	}
}

func testLateWriteReadBeforeRetireHeard(t *testing.T, store string) {
	const grace = 2 * time.Second
	f := startLateWriteFarm(t, store, func(c *session.Config) { c.ResumeGrace = grace })
	n1, n2, g1, g2, proxy := f.ms[0], f.ms[1], f.stores[0], f.stores[1], f.proxy
	stored := f.stored
	time.Sleep(1200 * time.Millisecond) // past the re-sends asked for at start

	// n1 issues S; its store write fails, the bus brings S to n2.
	g1.failing.Store(true)
	t.Cleanup(func() { g1.failing.Store(false); g2.failing.Store(false); g1.setHeld(false) })
	c, id := f.issueS()

	// The client resumes S on n2, whose store write of the cut fails; n1
	// does not hear of the resumption yet.
	proxy.Freeze()
	thawed := false
	t.Cleanup(func() {
		if !thawed {
			proxy.Thaw()
		}
	})
	g2.failing.Store(true)
	if !tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
		t.Fatal("S did not resume on n2")
	}
	cutAt := time.Now()
	farmtest.Eventually(t, 5*time.Second, "n2's write of its cut of S failed", func() bool {
		return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_store_write_errors_total") > 0
	})

	// Past S's grace, n1's store path comes back: its late write of S,
	// read whole, is held in flight.
	time.Sleep(time.Until(cutAt.Add(grace + 300*time.Millisecond)))
	g1.setHeld(true)
	g1.failing.Store(false)
	farmtest.Eventually(t, 10*time.Second, "n1's late write of S is held", func() bool { return g1.waiting.Load() > 0 })

	// n2's store path comes back: its cut of S, past its grace, goes to
	// the store as a deletion, which finds no record.
	g2.failing.Store(false)
	farmtest.Eventually(t, 10*time.Second, "n2 wrote its cut of S", func() bool { return g2.touched(id) })
	if stored(id) {
		t.Fatal("the store holds S before n1's late write landed")
	}

	// The cut reaches n1 between the read and the write's landing.
	proxy.Thaw()
	thawed = true
	farmtest.Eventually(t, 5*time.Second, "n1 let S go", func() bool { _, ok := lookup(n1.Cache, id); return !ok })

	// The write lands; what n1 writes behind it is held.
	writes := farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_store_writes_total")
	g1.passHeld()
	farmtest.Eventually(t, 5*time.Second, "n1's late write of S landed", func() bool {
		return farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_store_writes_total") > writes
	})
	if stored(id) {
		t.Error("n1's late write put S back in the store after n2 retired it")
	}
	if f.n3Resumes(c) {
		t.Error("n3 resumed S past its grace, from n1's late write")
	}
	g1.setHeld(false)
}
