package farmtest

import (
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
)

// Recovery measures how long cross-node resumption stays broken after
// fail (which kills a server of the farm's transport) runs. A client
// reconnects at once, each time to another member than the one that issued
// its newest session, so that every resumption needs the farm, going round
// every member (on three, through every ordered pair). Once need
// resumptions in a row have succeeded, Recovery returns the time from fail
// to the last connection that did not resume (0 if every one did). It fails
// the test if that has not happened within limit after fail, or if a
// handshake fails.
func Recovery(t testing.TB, ms []*Member, version uint16, need int, limit time.Duration, fail func()) time.Duration {
	t.Helper()
	ccfg := Client(version, &tlstest.SharedCache{})
	issuer := 0
	tlstest.MustDial(t, ms[issuer].Server.Addr, ccfg)
	fail()
	start := time.Now()
	var lastMiss time.Time
	run, dials, misses := 0, 0, 0
	for run < need {
		if time.Since(start) > limit+3*time.Second {
			t.Fatalf("cross-node resumption not back %v after the failure: last miss at %v, %d misses in %d connections",
				time.Since(start).Round(time.Millisecond), lastMiss.Sub(start).Round(time.Millisecond), misses, dials)
		}
		// A step of 1 for len(ms) dials, then of 2, and so on. (A step
		// alternating between 1 and 2 went 0, 1, 0, 1, ... on three
		// members: the third never served a client.)
		issuer = (issuer + 1 + dials/len(ms)%(len(ms)-1)) % len(ms)
		cs, err := tlstest.Dial(ms[issuer].Server.Addr, ccfg)
		dials++
		if err != nil {
			t.Fatalf("handshake failed %v after the failure: %v", time.Since(start).Round(time.Millisecond), err)
		}
		if cs.DidResume {
			run++
			continue
		}
		run = 0
		misses++
		lastMiss = time.Now()
	}
	back := time.Duration(0)
	if !lastMiss.IsZero() {
		back = lastMiss.Sub(start)
	}
	trips := make([]uint64, len(ms))
	for i, m := range ms {
		trips[i] = Counter(m.Node.Metrics(), "tlsfarm_farm_breaker_trips_total")
	}
	t.Logf("cross-node resumption back %v after the failure (%d misses in %d connections; store breaker trips per node %v)",
		back.Round(time.Millisecond), misses, dials, trips)
	if back > limit {
		t.Fatalf("cross-node resumption came back %v after the failure, want at most %v", back.Round(time.Millisecond), limit)
	}
	return back
}
