// Package retry holds the wait between attempts that the transports and
// the farm use when a server is unreachable.
package retry

import (
	"math/rand/v2"
	"time"
)

// Backoff returns how long to wait after the given number of consecutive
// failures (1 for the first): base, doubling with each further failure up
// to max, and then a random duration between half of that and all of it, so
// that servers that lost the same peer at the same moment do not all come
// back at once. A failures count below 1 counts as 1; a max below base
// counts as base.
func Backoff(failures int, base, max time.Duration) time.Duration {
	if base <= 0 {
		return 0
	}
	d := base
	for i := 1; i < failures && d < max; i++ {
		d *= 2
	}
	if d > max && max >= base {
		d = max
	}
	return d/2 + rand.N(d/2+1)
}
