package farm_test

import (
	"context"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/natstest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// natsTransport opens, for each node, one NATS transport at url as its
// bus and store, and deletes the farm's buckets when the test ends.
func natsTransport(url string) func(testing.TB, string) (transport.Bus, transport.Store) {
	return func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
		tr, err := natsbus.Open(url, farmName, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			natstest.DeleteBuckets(t, tr.Conn(), tr.Bucket(), tr.RecordBucket())
			tr.Close()
		})
		return tr, tr
	}
}

// capacityStores are the stores the capacity tests run on: the shared
// Redis and the shared NATS (2.9 here).
func capacityStores(t *testing.T) map[string]func(testing.TB, string) (transport.Bus, transport.Store) {
	return map[string]func(testing.TB, string) (transport.Bus, transport.Store){
		"redis": redisTransport(redistest.URL(t)),
		"nats":  natsTransport(farmtest.ServerURL(t, "NATS", "TLSFARM_NATS_URL", "nats://127.0.0.1:4222")),
	}
}

// TestManyPendingRevocationsReachTheStore: revocations queued faster than
// the store takes them (as those made while the store was down) all reach
// the store and the bus. Before the fix they were written in one batch
// bounded by OpTimeout (2 s by default), about 225 µs a tombstone on Redis
// here: a list over about 9000 never got through and was tried again
// whole, for ever. The test shortens OpTimeout to 500 ms and queues 8000
// (about 1.8 s as one batch on Redis, 2.7 s on NATS, under -race) so that
// it runs in seconds and still fails without the fix.
func TestManyPendingRevocationsReachTheStore(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("writes 8000 tombstones")
	}
	for name, nt := range capacityStores(t) {
		t.Run(name, func(t *testing.T) {
			o := farmtest.Options{NewTransport: nt, Tweak: func(c *farm.Config) { c.OpTimeout = 500 * time.Millisecond }}
			ms, _ := farmtest.Start(t, 1, &o)
			n1 := ms[0]
			const count = 8000
			start := time.Now()
			n1.Node.QueueRevocations(1, count, time.Now().Add(3*time.Minute))
			farmtest.Eventually(t, 60*time.Second, "every revocation applied", func() bool { return n1.Node.PendingRevocations() == 0 })
			t.Logf("%d revocations applied in %v", count, time.Since(start).Round(time.Millisecond))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			got, err := n1.Store.SetMembers(ctx, "revoked")
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != count {
				t.Fatalf("the store holds %d tombstones, want %d", len(got), count)
			}
		})
	}
}
