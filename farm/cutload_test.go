package farm_test

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestCutNotUndoneByStoreWhileCutWaits: n1's store path is slow (its store
// writes wait; the bus works). A session P that n1 issued is resumed on
// n1, which cuts it to its grace: in its cache at once, on peers at once
// (over the bus: the child's copy in broadcast mode, a cut message in
// store-only mode), and in the store only when n1's write lands. n3 joins
// after P was issued, so it never held P; n2 holds P only in broadcast
// mode. Every node heard of the cut, so none may resume P past its grace,
// though the store still holds P whole: n3 and (store-only) n2 load it
// from the store on a miss, and n1 and (broadcast) n2 miss too once their
// cut copy ends. Within the grace a node that loads P resumes it (its
// load is cut, not refused). Before the loader applied the cuts a node
// knows of, every node resumed P past its grace from the store's whole
// record while n1's write waited. (n4's store writes wait too: its
// resumption within the grace would cut the store's record.)
func TestCutNotUndoneByStoreWhileCutWaits(t *testing.T) {
	t.Parallel()
	const grace = time.Second
	for _, mode := range []farm.Mode{farm.Broadcast, farm.StoreOnly} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			url := redistest.URL(t)
			var stores []*gatedStore
			o := &farmtest.Options{Mode: mode, NewTransport: gatedStorePaths(url, &stores),
				TweakCache: func(c *session.Config) {
					c.ResumeGrace = grace
					// Expired copies go soon: n1 and n2 miss P then, as a
					// node that evicted it would.
					c.SweepInterval = 50 * time.Millisecond
				},
				Tweak: func(c *farm.Config) { c.OpTimeout = 30 * time.Second }} // n1's held writes must not time out
			ms, name := farmtest.Start(t, 2, o)
			n1, n2 := ms[0], ms[1]
			g := stores[0]

			ids, cs := farmtest.Issue(t, n1, 1)
			p, pClient := ids[0], cs[0]
			waitStored(t, n1, p)
			if mode == farm.Broadcast {
				waitHeld(t, n2, p)
			}
			n3 := farmtest.Join(t, "n3", name, *o)
			n4 := farmtest.Join(t, "n4", name, *o)
			late := []*farmtest.Member{n3, n4}
			farmtest.WaitConnected(t, late...)
			farmtest.WaitRevocationsKnown(t, late...)
			if farmtest.Started != nil {
				farmtest.Started(t, late)
			}
			for _, m := range late {
				if _, ok := lookup(m.Cache, p); ok {
					t.Fatalf("%s, joining after P was issued, holds P", m.Name)
				}
			}
			all := []*farmtest.Member{n1, n2, n3}

			// n1's store writes wait from now on, and n4's (its
			// resumption below must not cut the store's record
			// either); P resumed on n1.
			g4 := stores[3]
			for _, g := range []*gatedStore{g, g4} {
				g.setHeld(true)
				defer g.setHeld(false)
			}
			kids := farmtest.HandshakeSessions(n1.Cache)
			resumed := time.Now()
			if !tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, pClient)).DidResume {
				t.Fatal("P did not resume on n1")
			}
			c := kids()[0]
			// The peers hear of the cut.
			for _, m := range []*farmtest.Member{n2, n3, n4} {
				farmtest.Eventually(t, setupWait, m.Name+" heard of P's cut", func() bool {
					if mode == farm.Broadcast {
						_, ok := lookup(m.Cache, c)
						return ok
					}
					return farmtest.Counter(m.Node.Metrics(), "tlsfarm_farm_lifecycle_total", "event", "cut_received") > 0
				})
			}
			farmtest.Eventually(t, setupWait, "n1's store write to wait", func() bool { return g.waiting.Load() > 0 })
			waitStored(t, n3, p) // still there, whole: the cut waits

			// Within the grace n4 loads P and resumes it (then holds it
			// cut by its own resumption: it is not checked past the grace).
			if time.Since(resumed) < grace/2 {
				if !tlstest.MustDial(t, n4.Server.Addr, farmtest.Client(tls.VersionTLS13, pClient)).DidResume {
					t.Error("n4 did not resume P within its grace")
				}
			}
			time.Sleep(time.Until(resumed.Add(grace + 200*time.Millisecond)))
			for _, m := range all {
				if tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, pClient)).DidResume {
					t.Errorf("%s resumed P past its grace from the store's whole record while n1's cut waited", m.Name)
				}
			}

			g.setHeld(false)
			g4.setHeld(false)
			waitUnstored(t, n2, p) // the cut, written past the grace, retires P
			for _, m := range all {
				if tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, pClient)).DidResume {
					t.Errorf("%s resumed P past its grace after n1's cut landed", m.Name)
				}
			}
		})
	}
}
