package farm_test

import (
	"context"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestCarriedRevokeWhileBatchWaits: a session issued on n1 waits in n1's
// flush window (50ms here) when n2, which never held it, is asked to
// revoke it. The session is young, so it may be on its way: n2 must find
// it (the bus or the store brings it within the young window) and revoke
// its chain, not answer not-found and leave it to resume from its carried
// copy on n2 and from its own copy on n1. Over Redis (bus and store), and
// over a NATS bus with a Redis store.
func TestCarriedRevokeWhileBatchWaits(t *testing.T) {
	t.Parallel()
	window := func(c *farm.Config) { c.FlushWindow = 50 * time.Millisecond }
	t.Run("redis", func(t *testing.T) {
		testCarriedRevokeWhileBatchWaits(t, startCarryFarm(t, 2, 0, 10*time.Second, window).ms)
	})
	t.Run("nats", func(t *testing.T) {
		natsURL := farmtest.ServerURL(t, "NATS", "TLSFARM_NATS_URL", "nats://127.0.0.1:4222")
		o := &farmtest.Options{
			Mode: farm.Broadcast, WriteThrough: true,
			Rotation:     &farm.RotationConfig{Interval: time.Hour},
			NewTransport: natsBusRedisStore(natsURL, redistest.URL(t)),
			TweakCache:   func(c *session.Config) { c.ResumeGrace = 10 * time.Second },
			Tweak: func(c *farm.Config) {
				c.CarrySessions = true
				c.MaxSkew = 100 * time.Millisecond
				c.WriteThroughTimeout = 2 * time.Second
				c.TallyInterval = -1
				window(c)
			},
		}
		ms, _ := farmtest.Start(t, 2, o)
		time.Sleep(300 * time.Millisecond) // past MaxSkew after each node began to reach the farm
		testCarriedRevokeWhileBatchWaits(t, ms)
	})
}

func testCarriedRevokeWhileBatchWaits(t *testing.T, ms []*farmtest.Member) {
	n1, n2 := ms[0], ms[1]
	ids := farmtest.HandshakeSessions(n1.Cache)
	c := &tlstest.FrozenCache{}
	dialAs(t, n1, "localhost", c)
	s := ids()[0]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := n2.Node.RevokeSession(ctx, s)
	if err != nil || st != farm.RevokeApplied {
		t.Errorf("RevokeSession on n2 = %v, %v; want applied", st, err)
	}
	farmtest.Eventually(t, 5*time.Second, "n1 dropped S", func() bool { _, ok := lookup(n1.Cache, s); return !ok })
	for _, m := range ms {
		if dialAs(t, m, "localhost", c).DidResume {
			t.Errorf("%s resumed a session revoked on n2", m.Name)
		}
	}
}
