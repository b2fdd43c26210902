package farm_test

import (
	"context"
	"crypto/tls"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestWriteBackLeavesOutChainUnderRevocation: n1 writes its sessions back
// to a store that lost its data (FLUSHALL of a private Redis) while its
// cache is still removing the sessions of a chain n2 revoked (n1's scan is
// held at its first removal). The write-back must leave that chain out:
// n2 has deleted what it knew of the chain from the store, and a record
// written back after that stays there for its whole life, for any node
// that has not read the tombstone to resume. A session of another chain
// is written back.
func TestWriteBackLeavesOutChainUnderRevocation(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rc.Close()
	o := &farmtest.Options{
		NewTransport: func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
			tr := openRedis(t, srv.URL(), farmName)
			return tr, tr
		},
		Tweak: func(c *farm.Config) {
			c.HealInterval = 200 * time.Millisecond
			c.TallyInterval = -1
		},
		// Sessions spread over many buckets, so that the scan held at
		// its first removal has the others still ahead of it.
		TweakCache: func(c *session.Config) { c.Buckets = 1024 },
	}
	ms, _ := farmtest.Start(t, 2, o)
	n1, n2 := ms[0], ms[1]

	// A chain of 16 sessions on n2, each resumed from the one before
	// (the parents stay in their grace), and one session of its own.
	issued := farmtest.HandshakeSessions(n2.Cache)
	cc := tls.NewLRUClientSessionCache(1)
	const n = 16
	for i := range n {
		cs := tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, cc))
		if cs.DidResume != (i > 0) {
			t.Fatalf("handshake %d: resumed = %t", i, cs.DidResume)
		}
	}
	control, _ := farmtest.Issue(t, n2, 1)
	chainIDs := issued()[:n]
	var chain uint64
	for id, r := range n2.Cache.Snapshot(-1) {
		if id == chainIDs[0] {
			chain = r.Chain
		}
	}
	if chain == 0 {
		t.Fatal("n2 does not hold the chain's first session")
	}
	all := append(append([]session.ID(nil), chainIDs...), control...)
	farmtest.Eventually(t, 5*time.Second, "n1 holds every session and the store has them", func() bool {
		for _, id := range all {
			if _, ok := n1.Cache.GetBuffer(id, nil); !ok || !stored(n1, id) {
				return false
			}
		}
		return true
	})
	farmtest.Eventually(t, 5*time.Second, "both nodes read the store's generation", func() bool {
		return n1.Node.StoreGeneration() != nil && n2.Node.StoreGeneration() != nil
	})

	// n1's scan of the chain stops at its first removal until released.
	var held atomic.Bool
	blocked, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	free := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(free)
	n1.Cache.AddHook(session.EventRemove, func(ev session.Event) {
		if ev.Reason == session.Removed && ev.Record.Chain == chain && held.CompareAndSwap(false, true) {
			close(blocked)
			<-release
		}
	})

	asked := func() uint64 {
		return farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_lifecycle_resend_total", "event", "request_sent")
	}
	before := asked()
	if err := rc.FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	// Revoked once n1 waits for its peers' re-sends, before it reads
	// its cache to write it back.
	farmtest.Eventually(t, 5*time.Second, "n1 found the store emptied and asked for re-sends", func() bool { return asked() > before })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if st, err := n2.Node.RevokeSession(ctx, chainIDs[n-1]); err != nil || st != farm.RevokeApplied {
		t.Fatalf("RevokeSession: %v, %v", st, err)
	}
	select {
	case <-blocked:
	case <-time.After(5 * time.Second):
		t.Fatal("n1 did not begin removing the revoked chain")
	}
	farmtest.Eventually(t, 10*time.Second, "n1 wrote its sessions back", func() bool {
		return farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_written_back_total") > 0
	})
	if !stored(n1, control[0]) {
		t.Error("the session of another chain was not written back")
	}
	var back int
	for _, id := range chainIDs {
		if stored(n1, id) {
			back++
		}
	}
	free()
	if back > 0 {
		t.Errorf("%d sessions of the chain under revocation were written back to the store", back)
	}
	farmtest.Eventually(t, 5*time.Second, "n1 removed the chain", func() bool {
		for _, id := range chainIDs {
			if _, ok := n1.Cache.GetBuffer(id, nil); ok {
				return false
			}
		}
		return true
	})
}
