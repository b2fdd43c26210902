package farm_test

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestLateWriteAfterCutFoundRecord: n1's first write of S is reported
// failed but landed (a timeout after the store applied it), so n1 keeps S
// to write again, as a late write, once its store path is back. n1's bus
// path is frozen, and the client resumes S on n2, whose cut finds the
// record n1 wrote and shortens it to S's grace. Then n1's late write of
// S, read whole, lands: in the "lapsed" shape past S's grace, when the
// record the cut shortened has lapsed; in the "within" shape while it
// lasts. n1 stays deaf to the cut, so nothing writes S again: the store
// must not hold S whole (in the "within" shape, nor hold it past its
// grace), and past the grace a node that never held S (n3, joining now)
// must not resume it. Before a cut that found its record left the
// lapsed-cut mark, the late write put S back whole either way.
func TestLateWriteAfterCutFoundRecord(t *testing.T) {
	t.Parallel()
	for _, store := range []string{"redis", "nats"} {
		for _, shape := range []string{"lapsed", "within"} {
			t.Run(store+"/"+shape, func(t *testing.T) {
				t.Parallel()
				testLateWriteAfterCutFoundRecord(t, store, shape == "lapsed")
			})
		}
	}
}

func testLateWriteAfterCutFoundRecord(t *testing.T, store string, lapsed bool) {
	grace := 2 * time.Second
	if !lapsed {
		grace = 6 * time.Second // room for n1's backlog to write S within it
	}
	f := startLateWriteFarm(t, store, func(c *session.Config) { c.ResumeGrace = grace })
	n1, n2, g1, g2, proxy := f.ms[0], f.ms[1], f.stores[0], f.stores[1], f.proxy
	stored := f.stored
	time.Sleep(1200 * time.Millisecond) // past the re-sends asked for at start

	// n1 issues S; its first write lands but is reported failed, and its
	// store path fails from then on. The bus brings S to n2.
	g1.landing.Store(true)
	t.Cleanup(func() { g1.failing.Store(false) })
	c, id := f.issueS()
	if !stored(id) {
		t.Fatal("n1's first write of S did not land")
	}

	// The client resumes S on n2, whose cut finds S's record and shortens
	// it; n1 does not hear of it.
	proxy.Freeze()
	t.Cleanup(proxy.Thaw)
	if !tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
		t.Fatal("S did not resume on n2")
	}
	cutAt := time.Now()
	farmtest.Eventually(t, 5*time.Second, "n2 wrote its cut of S", func() bool { return g2.touched(id) })
	if !stored(id) {
		t.Fatal("n2's cut did not find S's record")
	}
	if store == "redis" {
		if ttl := gatedTTL(t, f.rc, g1.Transport, id); ttl > grace {
			t.Fatalf("n2's cut left S's record whole (%v left)", ttl.Round(time.Millisecond))
		}
	}

	if lapsed {
		time.Sleep(time.Until(cutAt.Add(grace + 300*time.Millisecond)))
		if stored(id) {
			t.Fatal("the record n2's cut shortened outlived S's grace")
		}
	}

	// n1's store path comes back: its late write of S, read whole, lands.
	writes := farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_store_writes_total")
	g1.failing.Store(false)
	farmtest.Eventually(t, 10*time.Second, "n1's late write of S landed", func() bool {
		return farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_store_writes_total") > writes
	})
	landed := time.Since(cutAt)
	if !lapsed && landed >= grace {
		t.Fatalf("n1's late write landed %v after the cut, past S's grace (%v): the test proves nothing", landed.Round(time.Millisecond), grace)
	}
	switch {
	case lapsed && stored(id):
		t.Errorf("n1's late write put S back in the store, %v after n2's cut, past S's grace (%v)", landed.Round(time.Millisecond), grace)
	case !lapsed && store == "redis":
		if ttl := gatedTTL(t, f.rc, g1.Transport, id); ttl > grace {
			t.Errorf("n1's late write put S in the store whole (%v left) over the record n2's cut shortened to its grace (%v)", ttl.Round(time.Millisecond), grace)
		}
	}

	// Past S's grace, with n1 still deaf to the cut, a node that never
	// held S loads it from the store: it must not resume it.
	time.Sleep(time.Until(cutAt.Add(grace + 300*time.Millisecond)))
	if stored(id) {
		t.Error("the store holds S past its grace, from n1's late write")
	}
	if _, ok := lookup(n1.Cache, id); !ok {
		t.Fatal("n1 let S go: it heard of the cut, and the test did not keep the window open")
	}
	if f.n3Resumes(c) {
		t.Error("n3 resumed S past its grace, from n1's late write")
	}
}
