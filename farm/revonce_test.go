package farm_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestOneRevocationOneTombstone: a session revoked once on a node, by
// Revoke or by RevokeSession, adds one member to the store's set of
// revocations, on Redis and on NATS, and the node's revoker applies it
// once. The node's REMOVE hook queues the revocation from within
// session.Cache.Remove, whose revocation of the chain goes on scanning
// the cache after it; the revoker often applied it (a store round trip)
// before Remove returned, and removedDone, finding nothing of the chain
// pending, queued it again: a second member, sealed anew
// (TestCoordOnlyKeepsRevocations saw two in every run). The first
// session's revocation takes that path every time: a hook of the test's,
// which runs after the node's, holds Remove until the revoker has applied
// what the node's hook queued. The second session is revoked as it comes.
func TestOneRevocationOneTombstone(t *testing.T) {
	t.Parallel()
	transports := map[string]func(testing.TB, string) (transport.Bus, transport.Store){
		"redis": redisTransport(redistest.URL(t)),
		"nats":  natsTransport(farmtest.ServerURL(t, "NATS", "TLSFARM_NATS_URL", "nats://127.0.0.1:4222")),
	}
	for trName, newTransport := range transports {
		for _, call := range []string{"Revoke", "RevokeSession"} {
			t.Run(trName+"/"+call, func(t *testing.T) {
				t.Parallel()
				oneRevocationOneTombstone(t, newTransport, call == "RevokeSession")
			})
		}
	}
}

// oneRevocationOneTombstone is TestOneRevocationOneTombstone on one
// transport, with RevokeSession if bySession, else Revoke.
func oneRevocationOneTombstone(t *testing.T, newTransport func(testing.TB, string) (transport.Bus, transport.Store), bySession bool) {
	ms, _ := farmtest.Start(t, 2, &farmtest.Options{
		NewTransport: newTransport,
		Tweak:        func(c *farm.Config) { c.TallyInterval = -1 },
	})
	n1 := ms[0]
	ids, _ := farmtest.Issue(t, n1, 2)

	var hold atomic.Pointer[session.ID] // the session whose Remove the hook holds
	held := make(chan bool, 1)          // the revoker applied the revocation meanwhile
	n1.Cache.AddHook(session.EventRemove, func(ev session.Event) {
		if id := hold.Load(); id == nil || ev.ID != *id || ev.Origin != session.OriginAPI {
			return
		}
		// The node's hook, which ran first, queued the revocation.
		for deadline := time.Now().Add(5 * time.Second); n1.Node.PendingRevocations() > 0 && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		held <- n1.Node.PendingRevocations() == 0
	})
	coord := n1.Store.(transport.Coordinator)
	members := func() int {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		got, err := coord.SetMembers(ctx, farm.TombstoneKey)
		if err != nil {
			t.Fatal(err)
		}
		return len(got)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i, id := range ids {
		waitStored(t, n1, id)
		if i == 0 {
			hold.Store(&id)
		} else {
			hold.Store(nil)
		}
		before, applied0 := members(), n1.Node.RevocationsApplied()
		if bySession {
			if st, err := n1.Node.RevokeSession(ctx, id); err != nil || st != farm.RevokeApplied {
				t.Fatalf("RevokeSession of session %d: %v, %v", i, st, err)
			}
		} else if ok, err := n1.Node.Revoke(ctx, id); err != nil || !ok {
			t.Fatalf("Revoke of session %d: %t, %v", i, ok, err)
		}
		if i == 0 {
			select {
			case ok := <-held:
				if !ok {
					t.Fatal("the revoker did not apply the revocation within 5s while Remove was held")
				}
			default:
				t.Fatal("the test's hook did not hold Remove")
			}
		}
		// What the revocation queues, it queues before Revoke (or
		// RevokeSession) returns; once none of it is pending, it is
		// all written, and nothing more comes.
		farmtest.Eventually(t, 10*time.Second, "n1's revoker idle", func() bool { return n1.Node.PendingRevocations() == 0 })
		applied := n1.Node.RevocationsApplied() - applied0
		got := members() - before
		time.Sleep(50 * time.Millisecond)
		if again := members() - before; again != got {
			t.Errorf("session %d: the set grew from %d to %d members after n1's revoker was idle", i, got, again)
		}
		if got != 1 || applied != 1 {
			t.Errorf("session %d (Remove held: %t): one revocation added %d members to the store's set, and n1's revoker applied %d; want 1 and 1",
				i, i == 0, got, applied)
		}
	}
}
