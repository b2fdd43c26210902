package farm

import (
	"context"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// TestResendHeldIncludesSent: a re-send carries the retirements and cuts
// the node made and sent (Node.sent) besides those that may not have
// reached the farm (Node.held), one per session: a retirement over a cut
// of the same session, the earlier of two cuts. Each goes out as a cut
// message (a cut too, in broadcast mode).
func TestResendHeldIncludesSent(t *testing.T) {
	n, _ := receiverNode(t, false, 1024)
	now := n.cfg.Now()
	a, b, c := n.cfg.Cache.NewID(), n.cfg.Cache.NewID(), n.cfg.Cache.NewID()
	n.holdLife([]item{
		{id: a, op: opCut, until: now.Add(5 * time.Second), expires: now.Add(time.Hour)},
		{id: c, op: opCut, until: now.Add(9 * time.Second), expires: now.Add(time.Hour)},
	}, now)
	n.keepSent(item{id: a, op: opRetire})
	n.keepSent(item{id: b, op: opCut, until: now.Add(5 * time.Second)})
	n.keepSent(item{id: c, op: opCut, until: now.Add(3 * time.Second)})
	if got := n.sent.len(); got != 3 {
		t.Fatalf("sent keeps %d items, want 3", got)
	}
	for _, it := range n.sent.live(now) {
		if want := n.lifeExpiry(it.id); it.expires != want.UnixNano() {
			t.Fatalf("a sent item is kept until %v, want the session's life end %v", time.Unix(0, it.expires), want)
		}
	}
	n.resendHeld(context.Background(), true)
	if got := n.rs.resent.Load(); got != 3 {
		t.Fatalf("re-sent %d items, want 3 (one per session)", got)
	}
	waitFor := func(what string, f func() bool) {
		t.Helper()
		for end := time.Now().Add(5 * time.Second); !f(); {
			if time.Now().After(end) {
				t.Fatalf("%s: retire_sent %d, cut_sent %d", what, n.life.retiresSent.Load(), n.life.cutsSent.Load())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitFor("one retirement and two cuts published", func() bool {
		return n.life.retiresSent.Load() == 1 && n.life.cutsSent.Load() == 2
	})
}

// TestEnqueueKeepsSent: the retirements and grace cuts this node makes are
// kept for a re-send whatever becomes of their first write; new sessions
// are not.
func TestEnqueueKeepsSent(t *testing.T) {
	n, _ := receiverNode(t, false, 1024)
	ids := []session.ID{n.cfg.Cache.NewID(), n.cfg.Cache.NewID(), n.cfg.Cache.NewID()}
	n.enqueue(item{id: ids[0], op: opRetire})
	n.enqueue(item{id: ids[1], op: opCut, until: n.cfg.Now().Add(time.Second)})
	n.enqueue(item{id: ids[2], op: opNew, rec: session.Record{Expires: n.cfg.Now().Add(time.Hour)}})
	kept := map[session.ID]itemOp{}
	for _, it := range n.sent.live(n.cfg.Now()) {
		kept[it.id] = it.op
	}
	for i, want := range []bool{true, true, false} {
		if _, ok := kept[ids[i]]; ok != want {
			t.Fatalf("item %d kept for a re-send: %v, want %v", i, ok, want)
		}
	}
}

// BenchmarkKeepSent measures what keeping a retirement or a cut for a
// re-send adds to the node's part of a resumption (the cache's event hook):
// one ID decryption (lifeExpiry) and a copy into the ring, full here
// (QueueSize 16384), so that each push overwrites the oldest.
func BenchmarkKeepSent(b *testing.B) {
	n, _ := receiverNode(b, false, 1024)
	ids := make([]session.ID, 1<<16)
	for i := range ids {
		ids[i] = n.cfg.Cache.NewID()
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		n.keepSent(item{id: ids[i%len(ids)], op: opRetire})
	}
}

// TestSentRing: the ring keeps the last size items, oldest overwritten
// first, and live leaves out what expired (a cut keeps its end).
func TestSentRing(t *testing.T) {
	now := time.Now()
	r := newSentRing(4)
	for i := range 6 {
		r.push(lifeID(i), opRetire, time.Time{}, now.Add(time.Hour))
	}
	r.push(lifeID(6), opCut, now.Add(time.Second), now.Add(time.Hour))
	r.push(lifeID(7), opRetire, time.Time{}, now.Add(-time.Second)) // expired
	if got := r.len(); got != 4 {
		t.Fatalf("the ring holds %d items, want 4", got)
	}
	got := map[session.ID]sentItem{}
	for _, it := range r.live(now) {
		got[it.id] = it
	}
	// Items 0-3 overwritten, 7 expired.
	if len(got) != 3 {
		t.Fatalf("live: %d items, want 3 (items 4, 5 and 6)", len(got))
	}
	if it, ok := got[lifeID(4)]; !ok || it.op != opRetire {
		t.Fatalf("item 4: %+v, %v", it, ok)
	}
	if it, ok := got[lifeID(6)]; !ok || it.op != opCut || it.until != now.Add(time.Second).UnixNano() {
		t.Fatalf("item 6: %+v, %v", it, ok)
	}
}
