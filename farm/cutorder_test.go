package farm_test

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestLaterCutKeepsEarlierCut: n3 resumes a session P, cutting it to its
// grace in the store and (by the child it publishes) on its peers; n2,
// deaf to the bus (a subscription that loses messages), misses that and
// resumes P from its own whole copy 1.5 s later. n2's cut of the store's
// record must not lengthen it to n2's own grace: the store keeps the
// earlier end, as every cache does, or a node without a copy (n4, joining
// after n3's grace) would load P and resume it past the grace it was cut
// to. Broadcast mode (in store-only mode n2 would load P cut from the
// store), Redis as bus and store.
func TestLaterCutKeepsEarlierCut(t *testing.T) {
	t.Parallel()
	const grace = 3 * time.Second
	srv := redistest.URL(t)
	o := &farmtest.Options{Mode: farm.Broadcast, NewTransport: deafGateTransport(srv),
		TweakCache: func(c *session.Config) { c.ResumeGrace = grace },
		Tweak:      func(c *farm.Config) { c.TallyInterval = -1 }}
	ms, name := farmtest.Start(t, 3, o)
	n1, n2, n3 := ms[0], ms[1], ms[2]
	rc := redis.NewClient(mustParseRedis(t, srv))
	defer rc.Close()
	st := n1.Store.(*deafGate).Transport
	// Past the re-sends the nodes' subscriptions coming up may ask for:
	// a re-send of n3's cut after n2's would hide what n2's did.
	time.Sleep(1200 * time.Millisecond)

	ids := farmtest.HandshakeSessions(n1.Cache)
	c := &tlstest.FrozenCache{}
	tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, c))
	id := ids()[0]
	farmtest.Eventually(t, 5*time.Second, "P stored, and held by n2 and n3", func() bool {
		_, ok2 := lookup(n2.Cache, id)
		_, ok3 := lookup(n3.Cache, id)
		return ok2 && ok3 && gatedTTL(t, rc, st, id) > grace
	})
	n2.Store.(*deafGate).deaf.Store(true)

	before := time.Now()
	if !tlstest.MustDial(t, n3.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
		t.Fatal("P did not resume on n3")
	}
	end := before.Add(grace) // n3's cut ends no later
	farmtest.Eventually(t, 5*time.Second, "n3's cut reached the store", func() bool { return gatedTTL(t, rc, st, id) <= grace })

	time.Sleep(grace / 2)
	kids := farmtest.HandshakeSessions(n2.Cache)
	if !tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
		t.Fatal("P did not resume on n2, from its whole copy")
	}
	// n2 writes its cut of P in the batch of P's child.
	farmtest.Eventually(t, 5*time.Second, "n2 stored P's child", func() bool {
		return len(kids()) > 0 && gatedTTL(t, rc, st, kids()[0]) > 0
	})
	// The bound is taken before the record's TTL is read, so that a test
	// descheduled in between cannot fail it; and it allows grace/6 for
	// n3's own cut, whose TTL is relative (PX, counted from when the
	// pipeline runs, not from when n3 built it: up to ~125 ms later in a
	// CI run at load 15). n2's cut would lengthen it by grace/2.
	want := time.Until(end)
	if left := gatedTTL(t, rc, st, id); left > want+grace/6 {
		t.Errorf("n2's later cut lengthened P in the store to %v, past n3's earlier cut (%v left)", left.Round(time.Millisecond), want.Round(time.Millisecond))
	}

	time.Sleep(time.Until(end) + 300*time.Millisecond)
	n4 := farmtest.Join(t, "n4", name, *o)
	farmtest.WaitConnected(t, n4)
	if tlstest.MustDial(t, n4.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
		t.Fatal("n4 resumed P past the grace n3 cut it to")
	}
}
