package farm_test

import (
	"context"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestWriteBackKeepsPeersCut: n1 knows a grace cut of a parent session
// that n2 missed (a cut n1 received from a peer that has since left: n1
// holds the session cut, and has nothing to re-send), and n2 holds it
// whole. The store restarts empty; n1 writes its sessions back first, the
// parent cut, and n2, whose generation reads are held off until then,
// writes back after it. n2's write-back must not lengthen the parent's
// record past the cut: a node that then loads it would resume the session
// past its grace. A control session, absent from the store when n2 writes
// back, is written. Before write-backs were Item.NoLonger, n2's plain SET
// put the parent back whole. Redis as bus and store, both modes.
func TestWriteBackKeepsPeersCut(t *testing.T) {
	t.Parallel()
	const grace = 30 * time.Second
	for _, mode := range []farm.Mode{farm.Broadcast, farm.StoreOnly} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			wf := startWriteBackFarm(t, mode, grace)
			ms, name, o, srv, g := wf.ms, wf.name, wf.o, wf.srv, wf.g
			n1, n2 := ms[0], ms[1]
			pttl := func(id session.ID) time.Duration {
				d, _ := wf.pttl(id)
				return d
			}

			ids, _ := farmtest.Issue(t, n1, 1)
			parent := ids[0]
			ids, _ = farmtest.Issue(t, n2, 1)
			control := ids[0]
			for _, id := range []session.ID{parent, control} {
				waitStored(t, n1, id)
			}
			if mode == farm.StoreOnly {
				copyToPeer(t, n1, n2, parent)
			}
			cutUntil := time.Now().Add(grace)
			whole := func(m *farmtest.Member, id session.ID) bool {
				rec, ok := lookup(m.Cache, id)
				return ok && rec.Expires.After(cutUntil.Add(time.Second))
			}
			farmtest.Eventually(t, 5*time.Second, "n2 holds the parent whole and both know the store's generation", func() bool {
				return whole(n2, parent) && n1.Node.StoreGeneration() != nil && n2.Node.StoreGeneration() != nil
			})
			// n1 learns the cut as from a peer's message: its cache
			// cuts the session, and n1 neither holds nor re-sends it.
			if _, ok := n1.Cache.Cut(parent, cutUntil); !ok || whole(n1, parent) {
				t.Fatal("n1 did not cut the parent")
			}

			g.gated.Store(true)
			srv.Kill()
			srv.Restart()
			farmtest.WaitConnected(t, n1, n2)
			const wb = "tlsfarm_farm_written_back_total"
			farmtest.Eventually(t, 10*time.Second, "n1 wrote back what it holds", func() bool {
				return farmtest.Counter(n1.Node.Metrics(), wb) > 0
			})
			if d := pttl(parent); d <= 0 || d > time.Until(cutUntil)+time.Second {
				t.Fatalf("after n1's write-back the parent's record keeps %v; want it cut to about %v", d, time.Until(cutUntil))
			}
			if !whole(n2, parent) || farmtest.Counter(n2.Node.Metrics(), wb) != 0 {
				t.Fatal("n2 no longer holds the parent whole, or wrote back already: the test proves nothing")
			}

			g.gated.Store(false)
			farmtest.Eventually(t, 10*time.Second, "n2 wrote back what it holds", func() bool {
				return farmtest.Counter(n2.Node.Metrics(), wb) > 0
			})
			if d := pttl(parent); d <= 0 || d > time.Until(cutUntil)+time.Second {
				t.Fatalf("after n2's write-back the parent's record keeps %v, past its cut (%v left): a node that loads it resumes it past its grace",
					d, time.Until(cutUntil).Round(time.Millisecond))
			}
			if d := pttl(control); d <= time.Until(cutUntil)+time.Second {
				t.Fatalf("n2's control session keeps %v in the store; want it written back whole", d)
			}
			// A node that joins now loads the parent cut.
			oj := *o
			n3 := farmtest.Join(t, "n3", name, oj)
			if !n3.Node.LoadFromStore(context.Background(), parent) {
				t.Fatal("n3 did not load the parent")
			}
			if whole(n3, parent) {
				t.Fatal("n3 loaded the parent whole, past its cut")
			}
		})
	}
}
