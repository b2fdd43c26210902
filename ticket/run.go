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
// A ring that is overdue by more than one Interval (restored from a State
// saved long ago, or left without Run for a while) rotates once, and drops
// the previous keys that the rotations it missed would have dropped: each
// stopped encrypting at Rotated or before, and resumes no ticket longer than
// Keep intervals after. The current key becomes the newest previous key
// whatever its age, since the ring may have encrypted with it until now.
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
			ch, err := r.rotateOverdueLocked(now)
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

// rotateOverdueLocked rotates as rotateLocked does, at now, which is at
// least one interval after the current key started encrypting, and drops
// the previous keys that the further rotations due by now would have
// dropped (see Run).
func (r *Ring) rotateOverdueLocked(now time.Time) (Status, error) {
	next, err := r.st.Rotate(now, r.keep)
	if err != nil {
		return Status{}, err
	}
	// A rotation at every interval would have moved the i-th previous key
	// to place i+missed, past the last kept one for i >= keep-missed.
	missed := now.Sub(r.st.Rotated) / r.interval
	if missed > 1 && len(next.Previous) > 1 {
		keepOld := 0
		if missed < time.Duration(r.keep) {
			keepOld = r.keep - int(missed)
		}
		if n := 1 + keepOld; n < len(next.Previous) {
			clear(next.Previous[n:])
			next.Previous = next.Previous[:n:n]
		}
	}
	return r.installLocked(&next, false, 0, 0), nil
}
