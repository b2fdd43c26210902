package farm_test

import (
	"bytes"
	"crypto/tls"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
)

// TestReconcileDuringWriteBackKeepsSessions: n2 finds the store emptied
// (a restart without persistence) and starts to write its sessions back;
// before it has, its bus subscription drops and comes back — as it does
// when the store's server restarts, the subscription often noticing after
// the node's other connections. The reconcile that follows must not take
// the emptied store for the farm's word: a session missing from it then
// was lost, not retired. So n2 keeps its session, writes it back, and n1
// resumes it from the store. (The subscription's outage began after n2
// had read the new generation, so the generation alone does not tell the
// reconcile that the store lost its data.)
func TestReconcileDuringWriteBackKeepsSessions(t *testing.T) {
	t.Parallel()
	ms, cuts, rc := cutFarm(t, 2, 5*time.Second, cutOptions{mode: farm.StoreOnly})
	n1, n2 := ms[0], ms[1]
	ids, cs := farmtest.Issue(t, n2, 1)
	id, c := ids[0], cs[0]
	waitStored(t, n2, id)
	var gen []byte
	farmtest.Eventually(t, 5*time.Second, "n2 knows the store's generation", func() bool {
		gen = n2.Node.StoreGeneration()
		return gen != nil
	})
	// gap drops n2's subscription and waits until n2 has settled the gap
	// once it is back, and, if reconciled, until every reconcile it
	// asked for has ended.
	gap := func(reconciled bool) {
		t.Helper()
		before, _ := n2.Node.ReconcileState()
		cuts[1].Cut()
		farmtest.Eventually(t, 5*time.Second, "n2's subscription down", func() bool { return !n2.Node.Connected() })
		cuts[1].Restore()
		farmtest.WaitConnected(t, n2)
		farmtest.Eventually(t, 10*time.Second, "n2 settled the gap", func() bool {
			gaps, pending := n2.Node.ReconcileState()
			return gaps > before && (!reconciled || !pending)
		})
	}

	if err := rc.FlushAll(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	// The first gap wakes n2's healer, which finds the new generation and
	// starts its write-back (which first waits for its peers' re-sends).
	// Not waiting for that gap's reconcile: one that runs late (a 2 s
	// delay planted before each pass) would leave the write-back done
	// before the second gap.
	gap(false)
	farmtest.Eventually(t, 5*time.Second, "n2 read the new generation", func() bool {
		g := n2.Node.StoreGeneration()
		return g != nil && !bytes.Equal(g, gen)
	})
	if stored(n2, id) {
		t.Fatal("n2 wrote its session back before the test could drop its subscription")
	}
	gap(true)
	if got := reconciles(n2, "retired"); got != 0 {
		farmtest.LogStats(t, ms)
		t.Fatalf("n2's reconcile retired %d sessions the store had lost", got)
	}
	farmtest.Eventually(t, 5*time.Second, "n2 wrote its session back", func() bool { return stored(n2, id) })
	if !tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
		farmtest.LogStats(t, ms)
		t.Fatal("n2's session did not resume on n1 after the store was refilled")
	}
}

// TestReplayedChildCutsParentOnPeers: in broadcast mode a resumption's
// grace cut reaches the peers with the child (see enqueue). n1's writes
// fail (its subscription stays up) while a client resumes a session on
// n1: the child is kept for later, and, once the writes work again, it is
// written and published from the backlog. It must still name its parent,
// so that n2, which holds the parent and missed nothing else, cuts it:
// past the grace the parent resumes on neither node.
func TestReplayedChildCutsParentOnPeers(t *testing.T) {
	t.Parallel()
	const grace = time.Second
	ms, cuts, _ := cutFarm(t, 2, grace, cutOptions{})
	n1, n2 := ms[0], ms[1]
	ids, cs := farmtest.Issue(t, n1, 1)
	id, c := ids[0], cs[0]
	waitStored(t, n1, id)
	waitHeld(t, n2, id)
	cuts[0].writesDown.Store(true)
	if !tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
		t.Fatal("the session did not resume on n1")
	}
	cutBy := time.Now().Add(grace)
	farmtest.Eventually(t, 5*time.Second, "n1 kept the child for later", func() bool {
		return farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_backlog_length") == 1
	})
	cuts[0].writesDown.Store(false)
	farmtest.Eventually(t, 10*time.Second, "n1 wrote and published what it kept", func() bool {
		return farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_backlog_length") == 0 &&
			farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_lifecycle_backlog_length") == 0
	})
	time.Sleep(time.Until(cutBy.Add(200 * time.Millisecond))) // the promise is about time
	for _, m := range ms {
		if tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
			farmtest.LogStats(t, ms)
			t.Fatalf("the parent resumed on %s past its grace", m.Name)
		}
	}
}
