package farm_test

import (
	"context"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
)

// TestCarriedRevokedWhileDeliveryLags: n1 reaches Redis through a proxy
// that holds every read, so that its bus delivery lags while its
// subscription, its probes and its store writes stay up. A session issued
// on n2 and revoked on n3 (RevokeSession has returned RevokeApplied) is
// then presented at once to n1, which has not heard of the revocation
// when the test begins to wait for it: n1 must not resume the copy the
// ticket carries.
//
//   - With a lag beyond Config.MaxDeliveryLag, n1 takes no carried copy
//     (counted lagging). Before the farm bounded the lag, it took this one.
//   - With a lag within it, n1 does take carried copies, so RevokeSession
//     must not report the revocation applied before a node lagging that
//     much has it: without its wait of MaxDeliveryLag, n1 took this one.
func TestCarriedRevokedWhileDeliveryLags(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		latency  time.Duration // each read through n1's proxy, either way
		maxLag   time.Duration
		refusals bool // n1 refuses carried copies for its lag
	}{
		{"beyond the bound", 300 * time.Millisecond, 150 * time.Millisecond, true},
		{"within the bound", 60 * time.Millisecond, 600 * time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startCarryFarm(t, 3, 1, 10*time.Second, func(c *farm.Config) {
				c.MaxDeliveryLag = tc.maxLag
				c.ProbeTimeout = 3 * time.Second // the lag must not count as an outage
			})
			n1, n2, n3 := f.ms[0], f.ms[1], f.ms[2]
			marker, ok := n1.Bus.(transport.DeliveryMarker)
			if !ok {
				t.Fatalf("the bus %T does not mark its delivery", n1.Bus)
			}
			lag := func() time.Duration {
				d := marker.DeliveredThrough()
				if d.IsZero() {
					return time.Hour
				}
				return time.Since(d)
			}
			farmtest.Eventually(t, 5*time.Second, "n1's delivery was marked", func() bool { return lag() < 150*time.Millisecond })
			f.px[0].SetLatency(tc.latency)
			if tc.refusals {
				farmtest.Eventually(t, 5*time.Second, "n1's delivery lags", func() bool { return lag() > tc.maxLag+50*time.Millisecond })
			} else {
				time.Sleep(300 * time.Millisecond)
				if l := lag(); l > tc.maxLag {
					t.Fatalf("n1's delivery lags %v, past the bound %v", l, tc.maxLag)
				}
			}
			if !n1.Node.Connected() {
				t.Fatal("n1 counts itself cut off: the test needs a lag, not an outage")
			}

			ids := farmtest.HandshakeSessions(n2.Cache)
			c := &tlstest.FrozenCache{}
			dialAs(t, n2, "localhost", c)
			s := ids()[0]
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			start := time.Now()
			if st, err := n3.Node.RevokeSession(ctx, s); err != nil || st != farm.RevokeApplied {
				t.Fatalf("RevokeSession = %v, %v", st, err)
			}
			took := time.Since(start)
			if dialAs(t, n1, "localhost", c).DidResume {
				t.Errorf("n1 resumed a session revoked on n3 (RevokeSession took %v) from its carried copy, its delivery %v behind",
					took.Round(time.Millisecond), lag().Round(time.Millisecond))
			}
			// Lagging past the bound, n1 refuses S for its lag: the carried
			// copy (lagging), or, when the issuer's broadcast reached n1
			// before the dial (under load, or a revoker that applies
			// late: a 300 ms delay planted before it), the copy it holds,
			// which the hit gate checks with the store (revoked), or
			// refuses when its read through the slow path fails
			// (store_error).
			gated := farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_gated_hits_total", "result", "revoked") +
				farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_gated_hits_total", "result", "store_error")
			if n := carried(n1, "lagging"); (n+gated > 0) != tc.refusals {
				t.Errorf("n1 refused %d carried copies and %d held ones for its lag (admitted %d), want refusals %t", n, gated, carried(n1, "admitted"), tc.refusals)
			}
			// Once n1's delivery has caught up, it has the revocation (its
			// mark passes it only then), and no node resumes S, from its
			// ticket or from a copy it holds.
			f.px[0].SetLatency(0)
			farmtest.Eventually(t, 10*time.Second, "n1's delivery caught up", func() bool { return lag() < tc.maxLag })
			for _, m := range f.ms {
				if dialAs(t, m, "localhost", c).DidResume {
					t.Errorf("%s resumed a revoked session after the lag (carried: admitted %d, lagging %d, refused %d)", m.Name,
						carried(m, "admitted"), carried(m, "lagging"), carried(m, "refused"))
				}
			}
		})
	}
}
