package main

import (
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// TestRunLookupsAtTheirRate runs a short simulation in store-only mode on
// a private redis-server, where each cross-node resumption is a store
// lookup, and checks that farmsim makes the -lookups it was asked for. It
// slept the gap between two lookups after each one, so every lookup's
// latency (and the sleep's own overshoot) came off the rate, unreported:
// the store's commands per second, which count the lookups, were measured
// for fewer lookups than the run claimed.
func TestRunLookupsAtTheirRate(t *testing.T) {
	srv := redistest.Start(t)
	admin, err := adminClient(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	ss, cs, err := oneSession()
	if err != nil {
		t.Fatal(err)
	}
	// 500 a second, from a schedule that hands them to a few workers.
	// One at a time, they made 424 of 500 in a CI run at load 10 (p50
	// 0.5 ms, p99 13 ms): a slow lookup's latency came off the rate.
	const want = 500
	r, err := run(srv.URL(), admin, 2, farm.StoreOnly, 1000, want, 2*time.Second, time.Minute, 100*time.Millisecond, ss, cs)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%.0f lookups/s, p50 %v, p99 %v, resumed %.1f%%", r.lookups, r.p50, r.p99, 100*r.resumed)
	if r.lookups < 0.85*want {
		t.Errorf("%.0f lookups/s made, %d asked for", r.lookups, want)
	}
	if r.resumed < 0.99 {
		t.Errorf("%.1f%% resumed", 100*r.resumed)
	}
}
