package retry

import (
	"math"
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	const base, max = 100 * time.Millisecond, 5 * time.Second
	for _, tc := range []struct {
		failures int
		full     time.Duration // the wait before jitter
	}{
		{-1, base},
		{0, base},
		{1, base},
		{2, 2 * base},
		{3, 4 * base},
		{6, 32 * base},
		{7, max},
		{1000, max},
		{math.MaxInt, max},
	} {
		lo, hi := tc.full, time.Duration(0)
		for range 200 {
			d := Backoff(tc.failures, base, max)
			lo, hi = min(lo, d), maxDur(hi, d)
		}
		if lo < tc.full/2 || hi > tc.full {
			t.Errorf("Backoff(%d) in [%v, %v], want within [%v, %v]", tc.failures, lo, hi, tc.full/2, tc.full)
		}
		if hi-lo < tc.full/10 {
			t.Errorf("Backoff(%d) in [%v, %v] over 200 calls: no jitter", tc.failures, lo, hi)
		}
	}
}

func TestBackoffEdges(t *testing.T) {
	if d := Backoff(3, 0, time.Second); d != 0 {
		t.Errorf("Backoff with base 0 = %v, want 0", d)
	}
	// A max below base: the wait stays at base.
	for range 50 {
		if d := Backoff(10, time.Second, time.Millisecond); d < time.Second/2 || d > time.Second {
			t.Fatalf("Backoff(10, 1s, 1ms) = %v, want within [500ms, 1s]", d)
		}
	}
}

func maxDur(a, b time.Duration) time.Duration {
	if a > b {
		return a
	}
	return b
}
