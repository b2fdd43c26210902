package farm_test

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestFirstWriteLandsAfterCut is the window a session's first write
// leaves: n1 issues S, and its first store write of S is slow (held in
// flight, not failed) while the bus brings S to n2 at once. n1's bus path
// is frozen, and the client resumes S on n2, whose cut of the store's
// record finds none and leaves the cut mark. Then n1's first write lands,
// a plain write of S whole, and n1 does not hear of the cut (its bus path
// stays frozen), so it writes nothing again. Past S's grace, a node that
// never held S (n3, joining now) loads S from the store, and must not
// resume it.
//
// In the "retire" shape, n2's store path fails when it resumes S: n2
// keeps its cut for later and writes it past S's grace, as a retirement,
// which finds no record and leaves the retirement mark; then n1's first
// write lands.
func TestFirstWriteLandsAfterCut(t *testing.T) {
	t.Parallel()
	for _, store := range []string{"redis", "nats"} {
		for _, retire := range []bool{false, true} {
			name := store
			if retire {
				name += "/retire"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				testFirstWriteLandsAfterCut(t, store, retire)
			})
		}
	}
}

func testFirstWriteLandsAfterCut(t *testing.T, store string, retire bool) {
	const grace = 2 * time.Second
	f := startLateWriteFarm(t, store, func(c *session.Config) { c.ResumeGrace = grace })
	n1, n2, g1, g2, proxy := f.ms[0], f.ms[1], f.stores[0], f.stores[1], f.proxy
	stored := f.stored
	time.Sleep(1200 * time.Millisecond) // past the re-sends asked for at start

	// n1 issues S; its first store write is held in flight, the bus
	// brings S to n2.
	c, id := f.issueHeldS()

	// The client resumes S on n2, whose cut finds no record; n1 does not
	// hear of it.
	proxy.Freeze()
	t.Cleanup(proxy.Thaw)
	if retire {
		g2.failing.Store(true)
		t.Cleanup(func() { g2.failing.Store(false) })
	}
	if !tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
		t.Fatal("S did not resume on n2")
	}
	cutAt := time.Now()
	if retire {
		// Past S's grace, n2's store path comes back: its cut, now a
		// retirement, finds no record.
		farmtest.Eventually(t, 5*time.Second, "n2's write of its cut of S failed", func() bool {
			return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_store_write_errors_total") > 0
		})
		time.Sleep(time.Until(cutAt.Add(grace + 300*time.Millisecond)))
		g2.failing.Store(false)
	}
	farmtest.Eventually(t, 10*time.Second, "n2 wrote its cut of S", func() bool { return g2.touched(id) })
	if stored(id) {
		t.Fatal("the store holds S before n1's first write landed")
	}

	// n1's first write lands, S whole.
	writes := farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_store_writes_total")
	g1.setHeld(false)
	farmtest.Eventually(t, 5*time.Second, "n1's first write of S landed", func() bool {
		return farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_store_writes_total") > writes
	})
	if retire && stored(id) {
		t.Error("n1's first write put S in the store after n2 retired it")
	}
	if !retire && store == "redis" {
		if ttl := gatedTTL(t, f.rc, g1.Transport, id); ttl > grace {
			t.Errorf("n1's first write put S in the store whole (%v left) after n2 cut it to its grace (%v)", ttl.Round(time.Second), grace)
		}
	}

	// Past S's grace, with n1 still deaf to the cut, a node that never
	// held S loads it from the store: it must not resume it.
	time.Sleep(time.Until(cutAt.Add(grace + 300*time.Millisecond)))
	if _, ok := lookup(n1.Cache, id); !ok {
		t.Fatal("n1 let S go: it heard of the cut, and the test did not keep the window open")
	}
	if f.n3Resumes(c) {
		t.Error("n3 resumed S past its grace, from n1's first write that landed after n2's cut")
	}
}
