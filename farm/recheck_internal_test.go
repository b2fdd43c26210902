package farm

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestRecheckWakesEveryWaiter drives probe.recheck and probe.end as the
// hit gate and a path's prober do, with nothing between a kick and the
// end of its probe, so that the waiter meets end at every point of it:
// every recheck that waits must be woken by the end of a probe begun
// after it looked, not by its context's deadline. A waiter that reads the
// new ended channel before lastEnded moves on sleeps on a channel no one
// closes (end must record lastEnded first, then swap): a lost wake-up.
// With end swapped first, 1 of 200,000 rechecks waited out its context in
// 3 of 5 runs (1 in 1 of 3 runs of 20,000); as end is, none in 10 runs.
// The probe's transport is never used: the prober here runs no ping.
func TestRecheckWakesEveryWaiter(t *testing.T) {
	pr := &probe{what: "store", kick: make(chan struct{}, 1)}
	ended := make(chan struct{})
	pr.ended.Store(&ended)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { // the prober: a probe at each kick, failed at once
		for {
			select {
			case <-stop:
				return
			case <-pr.kick:
			}
			seq := pr.begun.Add(1) // lastBegan left 0: no spacing here
			pr.up.Store(false)
			pr.lastFailed.Store(seq)
			pr.end(seq)
		}
	})
	// One waiter: no other hit's kick begins a probe that would wake a
	// waiter the end of its own left asleep.
	const waiters, rounds = 1, 200000
	const bound = 100 * time.Millisecond
	var lost, waited atomic.Int64
	var hits sync.WaitGroup
	for range waiters {
		hits.Go(func() {
			for range rounds {
				ctx, cancel := context.WithTimeout(context.Background(), bound)
				b := pr.begun.Load()
				pr.recheck(ctx)
				if ctx.Err() != nil {
					lost.Add(1)
				} else if pr.lastEnded.Load() > b {
					waited.Add(1)
				}
				cancel()
			}
		})
	}
	hits.Wait()
	close(stop)
	wg.Wait()
	t.Logf("%d rechecks, %d saw a probe end, %d waited out their %v", waiters*rounds, waited.Load(), lost.Load(), bound)
	if lost.Load() > 0 {
		t.Errorf("%d rechecks were not woken by the probe they began: they waited out their context (%v)", lost.Load(), bound)
	}
	if waited.Load() == 0 {
		t.Error("no recheck saw a probe end: the test tests nothing")
	}
}

// TestRecheckSeesAnswerJustIn: the hit gate asks recheck after it found
// the store's probe down (checkHit); a probe may answer between the two.
// A recheck that then begins no probe (one is in flight, or one began less
// than recheckSpacing ago) must report the answer that came in, not false:
// false sends the hit through unchecked (cut_off), a session revoked
// elsewhere resumed with the store answering. Here the state is set as
// that probe left it; no transport is used.
func TestRecheckSeesAnswerJustIn(t *testing.T) {
	for _, tc := range []struct {
		name     string
		inFlight bool
	}{{"spaced", false}, {"in flight", true}} {
		t.Run(tc.name, func(t *testing.T) {
			pr := &probe{what: "store", kick: make(chan struct{}, 1)}
			ended := make(chan struct{})
			pr.ended.Store(&ended)
			pr.begun.Store(1)
			pr.lastBegan.Store(sinceProbeEpoch()) // a moment ago
			pr.lastAnswered.Store(1)
			pr.up.Store(true)
			pr.end(1)
			if tc.inFlight {
				pr.begun.Store(2) // the next one, begun
			}
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			if !pr.recheck(ctx) {
				t.Error("recheck reported the store unanswered, its last probe answered")
			}
		})
	}
}
