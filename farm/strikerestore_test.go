package farm_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// TestStrikeRefusedAfterStoreRestoredFromSnapshot: Redis comes back from
// a snapshot taken before a 0-RTT flight was struck (RDB persistence and
// a crash, a restore from backup): the register's markers come back with
// the snapshot, the strike does not. A replay of the flight must be
// refused on every node, as after a restart empty. Before, the register
// looked unbroken and the replay was fresh.
func TestStrikeRefusedAfterStoreRestoredFromSnapshot(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ms, _ := farmtest.Start(t, 3, &farmtest.Options{NewTransport: redisTransport(srv.URL()),
		Tweak: func(c *farm.Config) {
			c.LookupTimeout, c.BreakerThreshold, c.MaxSkew = 5*time.Second, 1000, strikeSkew
		}})
	raw := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer raw.Close()
	ctx := context.Background()
	markers := redisOf(ms[0]).RecordKey("once:*")
	farmtest.Eventually(t, 10*time.Second, "every group's marker written", func() bool {
		keys, err := raw.Keys(ctx, markers).Result()
		return err == nil && len(keys) == 256
	})
	// A flight struck on n1, its replay refused on n2: the snapshot was
	// taken before both.
	if err := raw.Save(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	struck := []byte("ticket-struck-after-the-snapshot")
	issued := strikeIssuedNow(t, ms[0].Node, struck)
	if ok, err := ms[1].Node.Strike(ctx, struck, issued, time.Minute); ok || err != nil {
		t.Fatalf("a replay before the restart: fresh %v, %v; want a refusal", ok, err)
	}
	srv.Kill()
	srv.Restart()
	if keys, err := raw.Keys(ctx, markers).Result(); err != nil || len(keys) != 256 {
		t.Fatalf("after the restart the store holds %d markers (%v), want the snapshot's 256", len(keys), err)
	}
	for i, m := range ms {
		ok, err := strikeAnswer(t, m.Node, struck, issued)
		if ok || !errors.Is(err, farm.ErrStoreLost) {
			t.Fatalf("n%d, after the restart from the snapshot, a ticket struck before it: fresh %v, %v; want ErrStoreLost", i+1, ok, err)
		}
	}
	// Tickets issued after the restart carry early data once; the one
	// struck before it stays refused.
	later := []byte("ticket-issued-after-the-restart")
	laterIssued := strikeIssuedNow(t, ms[2].Node, later)
	for i, m := range ms {
		if ok, err := m.Node.Strike(ctx, later, laterIssued, time.Minute); ok || err != nil {
			t.Fatalf("n%d, a replay of a ticket issued after the restart: fresh %v, %v; want a replay", i+1, ok, err)
		}
		if ok, err := m.Node.Strike(ctx, struck, issued, time.Minute); ok || !errors.Is(err, farm.ErrStoreLost) {
			t.Fatalf("n%d, once the register began anew, a ticket struck before the restart: fresh %v, %v; want ErrStoreLost", i+1, ok, err)
		}
	}
}
