package farm

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// markingBus is silentBus marking its delivery as current (a
// transport.DeliveryMarker), so that a node over it may carry sessions.
type markingBus struct{ silentBus }

func (markingBus) DeliveredThrough() time.Time { return time.Now() }

// graceNode returns a broadcast node over a bus that drops everything,
// with a cache whose ResumeGrace is 10s, both on clock.
func graceNode(tb testing.TB, clock func() time.Time) *Node {
	tb.Helper()
	cache, err := session.New(&session.Config{SweepInterval: -1, ResumeGrace: 10 * time.Second, Now: clock})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cache.Close() })
	n, err := Join(context.Background(), Config{Farm: "bench", Secrets: []Secret{NewSecret(1)}, Cache: cache, Bus: markingBus{},
		Mode: Broadcast, Now: clock, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { n.Close() })
	return n
}

// TestRefreshLaterDropsCutSession: a session whose first store write
// failed, and whose cut to a time now past then came (a peer's re-send to
// this node back from a gap), has left the cache; the write that comes
// back from the backlog must not put it in the store whole (it did, and
// TestCarriedGraceCutThroughStoreLoss, cut-past-grace, saw it resume past
// its grace, about one run in three under -race).
func TestRefreshLaterDropsCutSession(t *testing.T) {
	now := time.Now()
	n := graceNode(t, func() time.Time { return now })
	id := n.cfg.Cache.NewID()
	rec := session.Record{State: realState(t), Expires: now.Add(time.Hour), Chain: 0x5eed5eed5eed5eed, ChainStart: now}
	if err := n.cfg.Cache.Insert(id, rec, session.OriginHandshake); err != nil {
		t.Fatal(err)
	}
	n.receiveCuts(appendCuts(nil, []cut{{id: id, until: now.Add(-time.Millisecond)}}), now)
	// Over: the cache lets it go, as its sweep would (Remove would
	// revoke its chain, Retire from a handshake would tell the farm).
	if r, ok := n.cfg.Cache.Cut(id, rec.Expires); !ok || r.Expires.After(now) {
		t.Fatalf("the cache holds the session until %v, cut to the past", r.Expires)
	}
	if !n.cfg.Cache.Retire(id, session.OriginPeer) {
		t.Fatal("the cache did not hold the session")
	}
	batch := []item{{id: id, op: opNew, rec: rec, later: true}}
	n.refreshLater(batch)
	if batch[0].op != opDropped {
		t.Fatalf("the late write of a session cut to the past is %v, want dropped", batch[0].op)
	}
}

// BenchmarkResumeEvent measures the node's part of a resumption (the
// cache's event hook for a new session resumed from a parent): the grace
// cut queued for the parent, and with carry on, the check of the parent's
// age (one ID decryption) that decides whether the cut is held for a
// re-send (mayBeCarried). The parents are old, as most are: carry=on
// holds none of them. The queue is drained by the node's publisher onto a
// bus that drops everything.
func BenchmarkResumeEvent(b *testing.B) {
	for _, carry := range []bool{false, true} {
		name := map[bool]string{false: "carry=off", true: "carry=on"}[carry]
		b.Run(name, func(b *testing.B) {
			now := time.Now()
			n := graceNode(b, func() time.Time { return now })
			cache := n.cfg.Cache
			parents := make([]session.ID, 1<<12)
			for i := range parents {
				parents[i] = cache.NewID()
			}
			now = now.Add(time.Minute) // the parents are a minute old
			n.cfg.WriteThrough = true  // as carry needs; the bus drops what is queued
			if carry {
				n.cfg.CarrySessions = true
				n.rotating.Store(true)
				if !n.carryAllowed() {
					b.Fatal("carry not allowed")
				}
			}
			child := cache.NewID()
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				n.lifecycleEvent(session.Event{Kind: session.EventNew, Origin: session.OriginHandshake, ID: child,
					Record: session.Record{Parent: parents[i%len(parents)]}})
			}
		})
	}
}
