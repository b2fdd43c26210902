package ticket_test

import (
	"context"
	"crypto/tls"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tlsfarm/tlsfarm/ticket"
)

// runRing starts r.Run in the bubble and returns a function that stops it and
// returns its error.
func runRing(r *ticket.Ring) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	return func() error {
		cancel()
		return <-done
	}
}

func checkEpoch(t *testing.T, r *ticket.Ring, want uint64, when string) {
	t.Helper()
	if got := r.Status().Epoch; got != want {
		t.Fatalf("%s: epoch %d, want %d", when, got, want)
	}
}

// The tests below run in a synctest bubble: time is fake and moves only when
// every goroutine in the bubble is blocked, so rotations happen exactly on
// schedule and the tests never wait in real time.

func TestRunRotatesEveryInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRing(t, ticket.RingConfig{Interval: time.Hour})
		r.Register(&tls.Config{}) // not serverConfig: its certificate must not be made in fake time
		start := time.Now()
		stop := runRing(r)

		synctest.Wait()
		checkEpoch(t, r, 0, "at start")
		time.Sleep(time.Hour - time.Nanosecond)
		synctest.Wait()
		checkEpoch(t, r, 0, "just before the interval")
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		checkEpoch(t, r, 1, "after one interval")
		time.Sleep(2 * time.Hour)
		synctest.Wait()
		checkEpoch(t, r, 3, "after three intervals")
		if st := r.Status(); !st.Rotated.Equal(start.Add(3*time.Hour)) || !st.Due.Equal(start.Add(4*time.Hour)) {
			t.Errorf("Status = %+v, want rotated at +3h, due at +4h", st)
		}

		if err := stop(); !errors.Is(err, context.Canceled) {
			t.Errorf("Run returned %v, want context.Canceled", err)
		}
		time.Sleep(10 * time.Hour)
		checkEpoch(t, r, 3, "after Run stopped")
	})
}

func TestRunRotatesRestoredStateWhenDue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ks := newKeys(t, 2)
		r := newRing(t, ticket.RingConfig{Interval: time.Hour, Initial: &ticket.State{
			Epoch:   9,
			Current: ks[0],
			Next:    ks[1],
			Rotated: time.Now().Add(-50 * time.Minute),
		}})
		stop := runRing(r)
		defer stop()
		time.Sleep(10*time.Minute - time.Nanosecond)
		synctest.Wait()
		checkEpoch(t, r, 9, "before the restored key is due")
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		checkEpoch(t, r, 10, "when the restored key is due")
		if cur := r.State().Current; cur != ks[1] {
			t.Errorf("current key %v, want the restored staged key %v", cur, ks[1])
		}

		// A ring restored long after it was due rotates once at once, not
		// once per missed interval.
		r2 := newRing(t, ticket.RingConfig{Interval: time.Hour, Initial: &ticket.State{
			Epoch:   3,
			Current: ks[0],
			Rotated: time.Now().Add(-100 * time.Hour),
		}})
		stop2 := runRing(r2)
		defer stop2()
		synctest.Wait()
		checkEpoch(t, r2, 4, "overdue ring after start")
	})
}

func TestRunFollowsSetAndUpdate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRing(t, ticket.RingConfig{Interval: time.Hour})
		stop := runRing(r)
		defer stop()

		// Set a state that became current 30 minutes ago: due in 30.
		time.Sleep(10 * time.Minute)
		ks := newKeys(t, 3)
		if err := r.Set(ticket.State{Epoch: 100, Current: ks[0], Next: ks[1], Rotated: time.Now().Add(-30 * time.Minute)}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(30*time.Minute - time.Nanosecond)
		synctest.Wait()
		checkEpoch(t, r, 100, "before the set state is due")
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		checkEpoch(t, r, 101, "when the set state is due")

		// Update restarts the period.
		time.Sleep(45 * time.Minute)
		if err := r.Update(ks[2]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Hour - time.Nanosecond)
		synctest.Wait()
		checkEpoch(t, r, 102, "an interval after Update, less 1ns")
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		checkEpoch(t, r, 103, "an interval after Update")
	})
}

func TestRunSchedulesFromNow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var skew time.Duration // Now runs this far ahead of the clock
		now := func() time.Time { return time.Now().Add(skew) }
		r := newRing(t, ticket.RingConfig{Interval: time.Hour, Now: now})
		skew = 2 * time.Hour
		stop := runRing(r)
		defer stop()
		synctest.Wait()
		checkEpoch(t, r, 1, "when Now says the key is overdue")
		if got := r.Status().Rotated; !got.Equal(now()) {
			t.Errorf("rotated at %v, want Now's %v", got, now())
		}
	})
}

func TestRunReturnsAtOnceIfDone(t *testing.T) {
	r := newRing(t, ticket.RingConfig{Interval: time.Nanosecond})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := r.Run(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v, want context.Canceled", err)
	}
	checkEpoch(t, r, 0, "after Run with a done context")
}

// TestTwoRunsRotateOnce runs two Runs on one ring: they share the schedule.
func TestTwoRunsRotateOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRing(t, ticket.RingConfig{Interval: time.Hour})
		defer runRing(r)()
		defer runRing(r)()
		time.Sleep(3 * time.Hour)
		synctest.Wait()
		checkEpoch(t, r, 3, "after three intervals with two Runs")
	})
}
