package session_test

import (
	"crypto/tls"
	"maps"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// TestExpiries: Expiries yields each live session once, with its expiry as
// the cache holds it (cut, if it was), and leaves out those expired,
// retired or removed.
func TestExpiries(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		n    int // sessions inserted, session i expiring i+1 minutes from now
		// edit changes the cache after the inserts.
		edit func(c *session.Cache, ids []session.ID, clk *clock)
		want map[int]time.Duration // session index -> its expiry, from the start
	}{
		{"empty", 0, nil, map[int]time.Duration{}},
		{"all live", 4, nil, map[int]time.Duration{0: time.Minute, 1: 2 * time.Minute, 2: 3 * time.Minute, 3: 4 * time.Minute}},
		{"expired left out", 4, func(c *session.Cache, ids []session.ID, clk *clock) {
			clk.Advance(2*time.Minute + time.Second) // not swept: still held
		}, map[int]time.Duration{2: 3 * time.Minute, 3: 4 * time.Minute}},
		{"expiring now left out", 2, func(c *session.Cache, ids []session.ID, clk *clock) {
			clk.Advance(time.Minute)
		}, map[int]time.Duration{1: 2 * time.Minute}},
		{"cut", 3, func(c *session.Cache, ids []session.ID, clk *clock) {
			c.Cut(ids[2], clk.Now().Add(30*time.Second))
		}, map[int]time.Duration{0: time.Minute, 1: 2 * time.Minute, 2: 30 * time.Second}},
		{"retired and removed left out", 4, func(c *session.Cache, ids []session.ID, clk *clock) {
			c.Retire(ids[0], session.OriginAPI)
			c.Remove(ids[3])
		}, map[int]time.Duration{1: 2 * time.Minute, 2: 3 * time.Minute}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clk := newClock()
			start := clk.Now()
			// Few buckets, several sessions each.
			c := newCache(t, &session.Config{Now: clk.Now, SweepInterval: -1, Buckets: 2})
			ids := make([]session.ID, tc.n)
			for i := range ids {
				ids[i] = c.NewID()
				if err := c.Insert(ids[i], session.Record{State: []byte{1}, Expires: start.Add(time.Duration(i+1) * time.Minute)}, session.OriginAPI); err != nil {
					t.Fatal(err)
				}
			}
			if tc.edit != nil {
				tc.edit(c, ids, clk)
			}
			want := map[session.ID]time.Time{}
			for i, d := range tc.want {
				want[ids[i]] = start.Add(d)
			}
			got := map[session.ID]time.Time{}
			for id, exp := range c.Expiries() {
				if _, dup := got[id]; dup {
					t.Fatalf("session %x yielded twice", id[:4])
				}
				got[id] = exp
			}
			if !maps.EqualFunc(got, want, time.Time.Equal) {
				t.Fatalf("Expiries yielded %d sessions %v, want %d %v", len(got), got, len(want), want)
			}
		})
	}
}

// TestExpiriesLoopMayCallCache: Expiries holds no lock while its loop body
// runs, which may retire and insert sessions (here: retire each one it is
// given, and insert a new one for each of the first few), and stops when
// the body breaks.
func TestExpiriesLoopMayCallCache(t *testing.T) {
	t.Parallel()
	const n = 500
	c, ids := filled(t, n, []byte{1})
	seen := 0
	for id := range c.Expiries() {
		if !c.Retire(id, session.OriginAPI) {
			t.Fatalf("session %x yielded but not held", id[:4])
		}
		if seen < 10 {
			if err := c.Insert(c.NewID(), session.Record{State: []byte{2}, Expires: time.Now().Add(time.Hour)}, session.OriginAPI); err != nil {
				t.Fatal(err)
			}
		}
		seen++
	}
	// Each of the n sessions was yielded, and some of the new ones (those
	// that landed in buckets not visited yet).
	if seen < n || seen > n+10 {
		t.Fatalf("Expiries yielded %d sessions, want %d to %d", seen, n, n+10)
	}
	for _, id := range ids {
		if _, ok := c.GetBuffer(id, nil); ok {
			t.Fatalf("session %x was never yielded", id[:4])
		}
	}
	c, _ = filled(t, n, []byte{1})
	seen = 0
	for range c.Expiries() {
		if seen++; seen == 7 {
			break
		}
	}
	if seen != 7 {
		t.Fatalf("the loop ran %d times, want 7", seen)
	}
}

// BenchmarkSnapshot and BenchmarkExpiries walk a cache of 100k sessions:
// with their records, sorted, or with their expiry times only, a bucket at
// a time.
func BenchmarkSnapshot(b *testing.B) {
	c, _ := filled(b, 100_000, realState(b, tls.VersionTLS13))
	b.ReportAllocs()
	for b.Loop() {
		n := 0
		for range c.Snapshot(-1) {
			n++
		}
		if n != 100_000 {
			b.Fatalf("%d sessions", n)
		}
	}
}

func BenchmarkExpiries(b *testing.B) {
	c, _ := filled(b, 100_000, realState(b, tls.VersionTLS13))
	b.ReportAllocs()
	for b.Loop() {
		n := 0
		for range c.Expiries() {
			n++
		}
		if n != 100_000 {
			b.Fatalf("%d sessions", n)
		}
	}
}
