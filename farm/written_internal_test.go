package farm

import (
	"context"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// TestWrittenFollowsRate: a node that writes new sessions faster than its
// memory of writes used to hold over MaxAge plus MaxSkew (65,536 IDs in
// 35 s: about 1,870 a second) must still remember each write for that
// long, and write again a peer's restriction of any of them that it hears
// within it (see recutLate); a write older than that is forgotten.
func TestWrittenFollowsRate(t *testing.T) {
	cache, err := session.New(&session.Config{SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	const ttl, rate, n = 35 * time.Second, 5000, 150_000 // 5,000 a second for 30 s
	now := time.Now()
	clock := func() time.Time { return now }
	node := &Node{cfg: Config{Cache: cache, Mode: Broadcast, Now: clock, MaxSkew: 100 * time.Millisecond}, sq: newQueue(16)}
	node.retired = newIDMemory(maxRetired, ttl)
	node.written = newWritten(ttl)
	start := now
	first := cache.NewID()
	batch := make([]item, 0, 250)
	batch = append(batch, item{id: first})
	for i := 1; i < n; i++ {
		if len(batch) == cap(batch) {
			node.recutWritten(batch, true, readMark{})
			batch = batch[:0]
			now = now.Add(250 * time.Second / rate)
		}
		batch = append(batch, item{id: cache.NewID()})
	}
	node.recutWritten(batch, true, readMark{})
	last := batch[len(batch)-1].id

	heard := func(id session.ID) bool {
		node.recutLate(id, time.Time{}, time.Time{}, false)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		got, _ := node.sq.pop(ctx, nil, 16)
		return len(got) == 1 && got[0].id == id && got[0].op == opRetire
	}
	if !heard(first) {
		t.Errorf("a retirement heard %v after the write, within MaxAge plus MaxSkew, was not written again", now.Sub(start).Round(time.Second))
	}
	now = now.Add(ttl + time.Second)
	if heard(last) {
		t.Error("a retirement heard past MaxAge plus MaxSkew after the write was written again")
	}
}

// TestWrittenPastBound: past its bound a node's memory of writes forgets
// the older of them, and until they would have lapsed takes every session
// for written: a restriction heard then is written again (a store write
// more), never left out.
func TestWrittenPastBound(t *testing.T) {
	const ttl = 10 * time.Second
	cache, err := session.New(&session.Config{SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	w := newIDMemory(1000, ttl)
	now := time.Now()
	ids := make([]session.ID, 1500)
	for i := range ids {
		ids[i] = cache.NewID()
		w.add(ids[i], now)
		now = now.Add(time.Millisecond)
	}
	if w.len() > 1000 {
		t.Errorf("the memory holds %d sessions, past its bound of 1000", w.len())
	}
	for _, i := range []int{0, 999, 1499} {
		if _, ok := w.since(ids[i], now); !ok {
			t.Errorf("session %d, written %v ago, is not taken for written", i, time.Duration(1500-i)*time.Millisecond)
		}
	}
	if _, ok := w.since(cache.NewID(), now); !ok {
		t.Error("past the bound, a session not found is not taken for written")
	}
	now = now.Add(ttl)
	if _, ok := w.since(ids[1499], now); ok {
		t.Error("a session written more than ttl ago is still taken for written")
	}
	if _, ok := w.since(cache.NewID(), now); ok {
		t.Error("a session never written is taken for written once the forgotten ones lapsed")
	}
	// Generations: a session is remembered for ttl, whatever the rotations.
	w2 := newIDMemory(1000, ttl)
	w2.add(ids[0], now)
	w2.add(ids[1], now.Add(ttl-time.Millisecond))
	w2.add(ids[2], now.Add(ttl)) // cur rotates to prev
	if _, ok := w2.since(ids[1], now.Add(2*ttl-2*time.Millisecond)); !ok {
		t.Error("a session written ttl ago, minus a millisecond, is forgotten after a rotation")
	}
	w2.add(ids[3], now.Add(2*ttl)) // another rotation drops ids[0] and ids[1]'s generation
	if _, ok := w2.since(ids[2], now.Add(2*ttl-time.Millisecond)); !ok {
		t.Error("a session written in the generation before is forgotten")
	}
}
