package natsbus

import (
	"testing"
	"time"
)

// TestLeaderAttempt: an attempt of a leader's get is a quarter of what is
// left of the read's bound, within leaderAttemptMin and leaderAttemptMax,
// and never more than is left: a lookup's short bound is one attempt.
func TestLeaderAttempt(t *testing.T) {
	for _, c := range []struct {
		left, want time.Duration
	}{
		{0, 0},
		{150 * time.Millisecond, 150 * time.Millisecond},
		{leaderAttemptMin, leaderAttemptMin},
		{600 * time.Millisecond, leaderAttemptMin},
		{2 * time.Second, 500 * time.Millisecond},
		{4 * time.Second, leaderAttemptMax},
		{30 * time.Second, leaderAttemptMax},
	} {
		if got := leaderAttempt(c.left); got != c.want {
			t.Errorf("leaderAttempt(%v) = %v; want %v", c.left, got, c.want)
		}
	}
}
