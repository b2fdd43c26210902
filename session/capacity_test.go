package session_test

import (
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// TestCapacityHeld: the cache holds at most Capacity sessions, whatever
// bucket each insert lands in. An insert into a full cache evicts in its own
// bucket, and one whose bucket was empty evicted nothing: with as many
// buckets as sessions (a small cache, such as the key agent's 64), a third
// of the buckets stay empty as the cache fills, and it grew a third past
// its Capacity. Concurrent inserts past the last free place did the same.
func TestCapacityHeld(t *testing.T) {
	for _, tc := range []struct {
		name              string
		capacity, buckets int
		workers           int
	}{
		{"bucket per session", 64, 0, 1},
		{"few buckets", 1000, 256, 1},
		{"concurrent", 64, 0, 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCache(t, &session.Config{Capacity: tc.capacity, Buckets: tc.buckets})
			var evicted sync.Map
			c.AddHook(session.EventRemove, func(ev session.Event) {
				if ev.Reason == session.Evicted {
					evicted.Store(ev.ID, true)
				}
			})
			var wg sync.WaitGroup
			for range tc.workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range 20 * tc.capacity / tc.workers {
						if err := c.Insert(c.NewID(), record(8, 1, time.Hour), session.OriginAPI); err != nil {
							t.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			if got := stats(c).Size; got > uint64(tc.capacity) {
				t.Fatalf("the cache holds %d sessions, more than its Capacity %d", got, tc.capacity)
			}
			held := 0
			for id := range c.Snapshot(-1) {
				held++
				if _, ok := evicted.Load(id); ok {
					t.Fatal("a session reported evicted is still held")
				}
			}
			if held > tc.capacity {
				t.Fatalf("Snapshot yields %d sessions, more than the Capacity %d", held, tc.capacity)
			}
		})
	}
}
