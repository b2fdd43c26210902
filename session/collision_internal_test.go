package session

import (
	"bytes"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/metric"
)

// TestHashCollisions: a bucket keys its sessions by a 64-bit hash of their
// ID and keeps those whose hash another session already has in a second
// map. Random IDs almost never collide, so this test makes them: it runs the
// same random operations on a cache whose hashes are whole and on caches
// whose hashes keep one bit or none (every ID collides), all of one bucket
// so that their LRU order is the same, and requires the same results.
func TestHashCollisions(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return now }
	key := randomIDKey()
	mk := func(hmask uint64) *Cache {
		c, err := New(&Config{Capacity: 12, Buckets: 1, SweepInterval: -1, ResumeGrace: -1, Now: clock})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if err := c.SetIDKeys(key); err != nil {
			t.Fatal(err)
		}
		c.hmask = hmask
		return c
	}
	caches := []*Cache{mk(^uint64(0)), mk(1), mk(0)}
	rng := rand.New(rand.NewPCG(1, 2))
	var ids []ID
	for range 24 {
		ids = append(ids, caches[0].NewID())
	}
	type result struct {
		ok    bool
		n     int
		state []byte
		err   error
	}
	var collided bool
	for step := range 5000 {
		id := ids[rng.IntN(len(ids))]
		op := rng.IntN(7)
		life := time.Duration(1+rng.IntN(4)) * time.Minute
		var want result
		for i, c := range caches {
			var got result
			switch op {
			case 0, 1: // insert, new or replacing
				got.err = c.Insert(id, Record{
					State:   []byte{byte(step), byte(step >> 8)},
					Expires: now.Add(life),
					Chain:   uint64(1 + step%5),
				}, OriginAPI)
			case 2: // look up
				buf := make([]byte, 8)
				got.n, got.ok = c.GetBuffer(id, buf)
				got.state = buf[:got.n]
			case 3:
				got.ok = c.Retire(id, OriginAPI)
			case 4:
				var r Record
				r, got.ok = c.Cut(id, now.Add(2*time.Minute))
				got.state = r.State
			case 5:
				got.n = c.sweep()
			case 6:
				if step%50 == 0 {
					got.n = c.RemoveChain(uint64(1+step%5), now.Add(time.Minute), OriginAPI)
				}
			}
			if i == 0 {
				want = got
				continue
			}
			if got.ok != want.ok || got.n != want.n || !bytes.Equal(got.state, want.state) || (got.err == nil) != (want.err == nil) {
				t.Fatalf("step %d, op %d, hash mask %#x: got %+v, want %+v", step, op, c.hmask, got, want)
			}
		}
		if step%100 == 0 {
			now = now.Add(20 * time.Second)
		}
		for _, c := range caches[1:] {
			b := &c.buckets[0]
			b.mu.Lock()
			collided = collided || len(b.more) > 1
			b.mu.Unlock()
		}
		for _, c := range caches {
			if n, m := c.size.Load(), len(c.buckets[0].m)+len(c.buckets[0].more); n != int64(m) {
				t.Fatalf("step %d: size %d, maps hold %d", step, n, m)
			}
			if v, _ := metric.Value(c.Metrics(), "tlsfarm_cache_sessions"); int64(v) != c.size.Load() {
				t.Fatalf("step %d, hash mask %#x: tlsfarm_cache_sessions = %v, the cache holds %d", step, c.hmask, v, c.size.Load())
			}
		}
	}
	if !collided {
		t.Fatal("no hashes collided")
	}
	snap := func(c *Cache) map[ID]Record {
		m := map[ID]Record{}
		for id, r := range c.Snapshot(-1) {
			m[id] = r
		}
		return m
	}
	want := snap(caches[0])
	if len(want) == 0 {
		t.Fatal("the cache ended empty")
	}
	for _, c := range caches[1:] {
		got := snap(c)
		if len(got) != len(want) {
			t.Fatalf("hash mask %#x: %d sessions at the end, want %d", c.hmask, len(got), len(want))
		}
		for id, r := range want {
			if g, ok := got[id]; !ok || !bytes.Equal(g.State, r.State) || !g.Expires.Equal(r.Expires) {
				t.Fatalf("hash mask %#x: session %x is %+v, want %+v", c.hmask, id[:4], g.Expires, r.Expires)
			}
		}
	}
}
