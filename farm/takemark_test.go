package farm_test

import (
	"crypto/tls"
	"encoding/hex"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
)

// TestLateWriteAfterSingleUseTake: single use, and n1's first write of S
// is reported failed but landed (a timeout after the store applied it):
// n1 keeps S to write again, as a late write. n1's bus path is frozen, and
// the client resumes S on n2, whose single-use claim takes S from the
// store. n1's store path comes back, and n1 writes S again, read whole
// before it heard of the take, the write held in flight. n2's retirement
// of S reaches n1, and the late write lands; what n1 deletes behind it is
// held in turn. Until that lands, the store must not hold S, and a node
// that never held S (n3, joining now) must not take it and resume it: a
// second resumption of a single-use session.
func TestLateWriteAfterSingleUseTake(t *testing.T) {
	t.Parallel()
	for _, store := range []string{"redis", "nats"} {
		t.Run(store, func(t *testing.T) {
			t.Parallel()
			testLateWriteAfterSingleUseTake(t, store)
		})
	}
}

func testLateWriteAfterSingleUseTake(t *testing.T, store string) {
	f := startLateWriteFarm(t, store, singleUse)
	n1, n2, g1, proxy := f.ms[0], f.ms[1], f.stores[0], f.proxy
	stored := f.storedKey
	time.Sleep(1200 * time.Millisecond) // past the re-sends asked for at start

	// n1 issues S; its first write lands but is reported failed, and its
	// store path fails from then on. The bus brings S to n2.
	g1.landing.Store(true)
	t.Cleanup(func() { g1.failing.Store(false); g1.setHeld(false) })
	c, id := f.issueS()
	key := "s:" + hex.EncodeToString(id[:])
	if !stored(key) {
		t.Fatal("n1's first write of S did not land")
	}

	// The client resumes S on n2, which takes it from the store; n1 does
	// not hear of it yet.
	proxy.Freeze()
	thawed := false
	t.Cleanup(func() {
		if !thawed {
			proxy.Thaw()
		}
	})
	if !tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
		t.Fatal("S did not resume on n2")
	}
	if stored(key) {
		t.Fatal("n2's single-use claim left S in the store")
	}

	// n1's store path comes back: its late write of S, read whole, is
	// held in flight.
	g1.setHeld(true)
	g1.failing.Store(false)
	farmtest.Eventually(t, 10*time.Second, "n1's late write of S is held", func() bool { return g1.waiting.Load() > 0 })

	// n2's retirement reaches n1 between the read and the write's landing.
	proxy.Thaw()
	thawed = true
	farmtest.Eventually(t, 5*time.Second, "n1 let S go", func() bool { _, ok := lookup(n1.Cache, id); return !ok })

	// The write lands; what n1 writes behind it is held.
	writes := farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_store_writes_total")
	g1.passHeld()
	farmtest.Eventually(t, 5*time.Second, "n1's late write of S landed", func() bool {
		return farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_store_writes_total") > writes
	})
	if stored(key) {
		t.Error("n1's late write put S back in the store after n2 took it")
	}
	if f.n3Resumes(c) {
		t.Error("n3 resumed the single-use session S a second time, from n1's late write")
	}
	g1.setHeld(false)
}
