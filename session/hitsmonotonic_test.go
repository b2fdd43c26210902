package session_test

import (
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/metric"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestLookupCountersNeverGoBack scrapes the cache's metrics while another
// goroutine looks up a session whose state does not parse (a lookup that
// finds it, counted as a miss): tlsfarm_cache_lookups_total must never
// decrease between scrapes, for either result, or Prometheus takes it for
// a counter reset. Hits were reported as the buckets' hits less the
// unusable lookups, read before the buckets, so every unusable lookup made
// while a scrape went through the buckets counted as a hit in that scrape
// and as a miss in the next (hit 2179 -> 1 in one run).
func TestLookupCountersNeverGoBack(t *testing.T) {
	c, err := session.New(&session.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	bad := c.NewID()
	if err := c.Insert(bad, session.Record{State: []byte("not a session state"), ServerName: "localhost",
		Expires: time.Now().Add(time.Hour)}, session.OriginAPI); err != nil {
		t.Fatal(err)
	}
	good := c.NewID()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			c.Get(bad)
			c.Get(good) // a plain miss
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	var lastHit, lastMiss float64
	for i := 0; i < 2000; i++ {
		s := c.Metrics()
		hit, _ := metric.Value(s, "tlsfarm_cache_lookups_total", "result", "hit")
		miss, _ := metric.Value(s, "tlsfarm_cache_lookups_total", "result", "miss")
		if hit < lastHit || miss < lastMiss {
			t.Fatalf("scrape %d: lookups went back: hit %v -> %v, miss %v -> %v", i, lastHit, hit, lastMiss, miss)
		}
		lastHit, lastMiss = hit, miss
	}
	// A scrape may catch one lookup between finding the session and
	// finding it unusable (one goroutine looks up), and the hit it saw is
	// kept rather than taken back: at most one hit over.
	if lastHit > 1 {
		t.Errorf("%v hits counted for lookups of a session that does not parse and of one never held, want at most 1", lastHit)
	}
}
