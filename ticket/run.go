package ticket

import (
	"context"
	"time"
)

// Run rotates the ring's keys, as Rotate does, each time Interval has passed
// since the current key started encrypting (State.Rotated), until ctx is done.
// Its schedule follows the key set in use, not the time Run was called: a ring
// made from a restored State that is already due rotates at once, and an
// Update or Set during Run moves the next rotation to Interval after it.
//
// Run returns ctx.Err() once ctx is done, or the error of a rotation that
// failed. It is meant to run in one goroutine per ring; two Runs on one ring
// still rotate only once per Interval.
func (r *Ring) Run(ctx context.Context) error {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		r.mu.Lock()
		now := r.now()
		wait := r.st.Rotated.Add(r.interval).Sub(now)
		if wait <= 0 {
			ch, err := r.rotateLocked()
			r.mu.Unlock()
			if err != nil {
				return err
			}
			r.logChange("ticket: keys rotated", ch)
			continue
		}
		r.mu.Unlock()
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
		case <-r.changed:
		}
	}
}
