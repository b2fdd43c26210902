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

// TestRetiredNotLoadedWhileDeletionWaits: n1's store path is slow (its
// store writes wait; the bus works). A parent P resumed twice on n1 within
// its grace retires its first child C1 (bounded children): the retirement
// reaches n2 over the bus at once, while C1's record stays in the store
// until n1's write lands. Neither n1, which retired C1, nor n2, which
// heard it, may load C1 back from the store meanwhile and resume it.
// Before the loader consulted the IDs retired lately, both resumed C1
// (the store still had it), as a slow store path (a planted delay before
// every store write) showed in TestNATSSlowConsumerStaleIssue. After the
// write lands, C1 is gone from the store too.
func TestRetiredNotLoadedWhileDeletionWaits(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	var stores []*gatedStore
	o := &farmtest.Options{Mode: farm.Broadcast, NewTransport: gatedStorePaths(url, &stores),
		TweakCache: func(c *session.Config) { c.ResumeGrace = 30 * time.Second },
		Tweak:      func(c *farm.Config) { c.OpTimeout = 30 * time.Second }} // n1's held writes must not time out
	ms, _ := farmtest.Start(t, 2, o)
	n1, n2 := ms[0], ms[1]
	g := stores[0]

	pClient, c1, c1Client := firstChild(t, n1)
	waitHeld(t, n2, c1)
	c1State, _ := c1Client.Get("")
	c1Frozen := &tlstest.FrozenCache{}
	c1Frozen.Put("", c1State)

	// n1's store writes wait from now on; P resumed again within its
	// grace: C1 is retired, on n1 and over the bus on n2.
	g.setHeld(true)
	defer g.setHeld(false)
	if !dialAs(t, n1, "localhost", pClient).DidResume {
		t.Fatal("P did not resume again on n1")
	}
	farmtest.Eventually(t, setupWait, "n2 dropped C1", func() bool {
		_, ok := lookup(n2.Cache, c1)
		return !ok && farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_lifecycle_total", "event", "retire_received") > 0
	})
	farmtest.Eventually(t, setupWait, "n1's store write to wait", func() bool { return g.waiting.Load() > 0 })
	if _, ok := lookup(n1.Cache, c1); ok {
		t.Fatal("n1 still holds C1 after its parent was resumed again")
	}
	waitStored(t, n2, c1) // still there: the deletion waits
	for _, m := range ms {
		if dialAs(t, m, "localhost", c1Frozen).DidResume {
			t.Errorf("%s resumed the retired C1 from the store while n1's deletion waited", m.Name)
		}
	}

	g.setHeld(false)
	waitUnstored(t, n2, c1)
	for _, m := range ms {
		if dialAs(t, m, "localhost", c1Frozen).DidResume {
			t.Errorf("%s resumed the retired C1 after its deletion landed", m.Name)
		}
	}
	// The farm still works: P's newest child resumes on n2.
	if !tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, pClient)).DidResume {
		t.Error("P did not resume on n2 within its grace")
	}
}

// TestRetiredNotLoadedWhenHeardDuringLoad: n3 misses a session C1 (it
// joined after C1 was issued) and looks it up in the store; while that
// read is on its way, C1 is retired on n1 (its parent P resumed again
// within its grace) and n3 hears of it over the bus, while n1's deletion
// of C1 waits (n1's store path is slow). The read then returns C1 whole.
// n3 must not take it: the retirement it heard during the read holds, as
// a grace cut heard then does (see cachePeer.Load). Nor may n3 resume C1
// afterwards. Before the loader asked the IDs retired lately after the
// read too (it asked only before it), n3 resumed C1 from that read, and
// issued a child of it: a line of P's that the retirement had ended.
func TestRetiredNotLoadedWhenHeardDuringLoad(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	var stores []*gatedStore
	o := &farmtest.Options{Mode: farm.Broadcast, NewTransport: gatedStorePaths(url, &stores),
		TweakCache: func(c *session.Config) { c.ResumeGrace = 30 * time.Second },
		Tweak: func(c *farm.Config) {
			c.OpTimeout = 30 * time.Second    // n1's held writes must not time out
			c.LookupTimeout = 4 * time.Second // nor n3's held read (the client waits 5s)
		}}
	ms, name := farmtest.Start(t, 2, o)
	n1 := ms[0]
	g1 := stores[0]

	pClient, c1, c1Client := firstChild(t, n1)
	c1State, _ := c1Client.Get("")
	c1Frozen := &tlstest.FrozenCache{}
	c1Frozen.Put("", c1State)

	n3 := farmtest.Join(t, "n3", name, *o)
	farmtest.WaitConnected(t, n3)
	farmtest.WaitRevocationsKnown(t, n3)
	if farmtest.Started != nil {
		farmtest.Started(t, []*farmtest.Member{n3})
	}
	g3 := stores[2]

	// n1's store writes wait from now on, and n3's reads of C1; the
	// client presents C1 to n3, whose lookup waits.
	g1.setHeld(true)
	defer g1.setHeld(false)
	g3.holdReads(c1, true)
	defer g3.holdReads(c1, false)
	type dialed struct {
		cs  tls.ConnectionState
		err error
	}
	during := make(chan dialed, 1)
	go func() {
		_, pool := tlstest.SharedCert()
		cs, err := tlstest.Dial(n3.Server.Addr, tlstest.ClientConfig(pool, "localhost", tls.VersionTLS13, c1Frozen))
		during <- dialed{cs, err}
	}()
	farmtest.Eventually(t, setupWait, "n3's read of C1 to wait", func() bool { return g3.readsWaiting.Load() > 0 })

	// P resumed again within its grace: C1 is retired, on n1 and over
	// the bus on n3; n1's deletion waits.
	retired := farmtest.Counter(n3.Node.Metrics(), "tlsfarm_farm_lifecycle_total", "event", "retire_received")
	if !dialAs(t, n1, "localhost", pClient).DidResume {
		t.Fatal("P did not resume again on n1")
	}
	farmtest.Eventually(t, setupWait, "n3 heard C1 retired", func() bool {
		return farmtest.Counter(n3.Node.Metrics(), "tlsfarm_farm_lifecycle_total", "event", "retire_received") > retired
	})
	farmtest.Eventually(t, setupWait, "n1's store write to wait", func() bool { return g1.waiting.Load() > 0 })
	if g3.readsWaiting.Load() == 0 {
		t.Fatal("n3's read of C1 no longer waits (its lookup gave up)")
	}

	// n3's read goes on, and finds C1 whole.
	g3.holdReads(c1, false)
	d := <-during
	if d.err != nil {
		t.Fatal(d.err)
	}
	if d.cs.DidResume {
		t.Error("n3 resumed C1 from the store's record read while it heard C1 retired")
	}
	if dialAs(t, n3, "localhost", c1Frozen).DidResume {
		t.Error("n3 resumed the retired C1 after it heard it retired")
	}
}

// firstChild issues a session P on n1 and, once P is stored, resumes it
// there once with a client of its own: it returns P's client, P's first
// child C1 (stored too) and the client holding C1's ticket.
func firstChild(t *testing.T, n1 *farmtest.Member) (pClient *tlstest.FrozenCache, c1 session.ID, c1Client *tlstest.SharedCache) {
	t.Helper()
	ids, cs := farmtest.Issue(t, n1, 1)
	pClient = cs[0]
	waitStored(t, n1, ids[0])
	first, _ := pClient.Get("")
	c1Client = &tlstest.SharedCache{}
	c1Client.Put("", first)
	kids := farmtest.HandshakeSessions(n1.Cache)
	if !dialAs(t, n1, "localhost", c1Client).DidResume {
		t.Fatal("P did not resume on n1")
	}
	c1 = kids()[0]
	waitStored(t, n1, c1)
	return pClient, c1, c1Client
}
