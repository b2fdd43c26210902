package farm

import (
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// TestRemovedDoneAfterApplied: removedDone, called once session.Cache.Remove
// has returned, queues nothing for a chain that the revoker applied
// meanwhile until the session's end (the REMOVE hook queued it from
// within Remove's scan): it used to find nothing pending and queue the
// chain again, one more tombstone. It still queues the chain when what
// was applied ends earlier than the session's chain (the end this node
// must put in the store), and when the revoker has applied recentApplied
// other chains since (the bound on what it remembers).
func TestRemovedDoneAfterApplied(t *testing.T) {
	cache, now, t0 := fileTestCache(t, &session.Config{Lifetime: time.Hour, MaxChainLifetime: 2 * time.Hour})
	n := lifeNode(t, "revonce", "", cache, now, false) // no RevocationFile: no fsync for each of the many adds
	n.revs.wake = make(chan struct{}, 1)
	const chain = 7
	rec := session.Record{Chain: chain, ChainStart: t0}
	end := cache.ChainEnd(rec)
	n.addRevocation(session.ID{1}, revocation{chain: chain, until: end, start: t0})
	settle(n, chain)
	if p := n.pendingRevocations(); p != 0 {
		t.Fatalf("%d revocations pending after the revoker applied the chain", p)
	}

	done := n.removedDone(session.ID{1}, rec)
	if p := n.pendingRevocations(); p != 0 {
		t.Fatalf("removedDone queued the chain the revoker had applied until the session's end: %d pending, want 0", p)
	}
	select {
	case <-done:
	default:
		t.Fatal("removedDone returned a done channel not closed for a chain applied already")
	}

	later := session.Record{Chain: chain, ChainStart: t0.Add(time.Minute)}
	if done := n.removedDone(session.ID{2}, later); done == nil || n.pendingRevocations() != 1 {
		t.Fatalf("removedDone of a later end than the one applied: %d pending, want 1", n.pendingRevocations())
	}
	settle(n, chain)

	for c := uint64(100); c < 100+recentApplied; c++ {
		n.addRevocation(session.ID{}, revocation{chain: c, until: end})
		settle(n, c)
	}
	if n.removedDone(session.ID{3}, later); n.pendingRevocations() != 1 {
		t.Fatalf("removedDone of a chain applied %d chains ago: %d pending, want 1 (queued again)", recentApplied, n.pendingRevocations())
	}
}

// BenchmarkRemovedDoneApplied measures removedDone for a chain the revoker
// applied while Remove scanned the cache, with the ring of chains applied
// full and the chain the last it compares: the scan that replaced queuing
// the chain again (an add, and another store write and publish).
func BenchmarkRemovedDoneApplied(b *testing.B) {
	cache, now, t0 := fileTestCache(b, &session.Config{Lifetime: time.Hour, MaxChainLifetime: 2 * time.Hour})
	n := lifeNode(b, "revonce", "", cache, now, false)
	n.revs.wake = make(chan struct{}, 1)
	for c := uint64(100); c < 100+recentApplied-1; c++ {
		n.addRevocation(session.ID{}, revocation{chain: c, until: t0.Add(time.Hour)})
		settle(n, c)
	}
	rec := session.Record{Chain: 7, ChainStart: t0}
	n.addRevocation(session.ID{1}, revocation{chain: 7, until: cache.ChainEnd(rec), start: t0})
	settle(n, 7)
	b.ReportAllocs()
	for b.Loop() {
		n.removedDone(session.ID{1}, rec)
	}
	if p := n.pendingRevocations(); p != 0 {
		b.Fatalf("%d pending", p)
	}
}
