package farm_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// TestStrikesCounted: each way a Strike ends is counted once under its
// result in tlsfarm_farm_strikes_total — a first use (fresh), a second
// (replay), a ticket issued before the register began (store_lost), and a
// store that was killed (error).
func TestStrikesCounted(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	ms, _ := farmtest.Start(t, 1, &farmtest.Options{NewTransport: redisTransport(rs.URL()),
		Tweak: func(c *farm.Config) { c.LookupTimeout, c.BreakerThreshold = 2*time.Second, 1000 }})
	node := ms[0].Node
	ctx := context.Background()
	counts := func() map[string]uint64 {
		out := map[string]uint64{}
		for _, r := range []string{"fresh", "replay", "store_lost", "error"} {
			out[r] = farmtest.Counter(node.Metrics(), "tlsfarm_farm_strikes_total", "result", r)
		}
		return out
	}
	// The node primes the register on a goroutine of its own when it
	// joins; a strike before that is refused (store_lost), as it should
	// be, but that is not the count under test here.
	farmtest.Eventually(t, 10*time.Second, "the strike register primed", func() bool {
		ok, err := node.Strike(ctx, []byte("before the steps"), issuedLater, time.Minute)
		return ok && err == nil
	})
	for _, step := range []struct {
		name   string
		issued time.Time
		want   string
		kill   bool
	}{
		{"first use", issuedLater, "fresh", false},
		{"second use", issuedLater, "replay", false},
		{"issued before the register began", time.Now().Add(-time.Hour), "store_lost", false},
		{"store killed", issuedLater, "error", true},
	} {
		if step.kill {
			rs.Kill()
		}
		before := counts()
		fresh, err := node.Strike(ctx, []byte("ticket"), step.issued, time.Minute)
		if got := map[bool]string{true: "fresh", false: "replay"}[fresh]; err == nil && got != step.want ||
			errors.Is(err, farm.ErrStoreLost) != (step.want == "store_lost") || (err != nil) != (step.want == "store_lost" || step.want == "error") {
			t.Fatalf("%s: strike %v, %v; want %s", step.name, fresh, err, step.want)
		}
		after := counts()
		for r, n := range after {
			want := before[r]
			if r == step.want {
				want++
			}
			if n != want {
				t.Errorf("%s: strikes_total{result=%q} went from %d to %d, want %d", step.name, r, before[r], n, want)
			}
		}
	}
	check(t, "node", node.Metrics(), "tlsfarm_farm_")
}
