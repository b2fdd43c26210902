package farm_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// setAddCounter is a Redis transport that counts its SetAdd calls.
type setAddCounter struct {
	*redisbus.Transport
	adds atomic.Int64
}

func (s *setAddCounter) SetAdd(ctx context.Context, key string, member []byte, until time.Time) error {
	s.adds.Add(1)
	return s.Transport.SetAdd(ctx, key, member, until)
}

// TestSlowStoreRevocationsDrain: the node reaches its store through a
// proxy that delays every read by 4 ms each way, so that a chunk of
// BatchSize (256) tombstones, one round trip each, needs some 2 s and
// cannot finish within OpTimeout (700 ms). Each attempt used to start
// again from the chunk's first tombstone, write as many as fit, time out,
// and so for ever: the list never drained. What a chunk writes before its
// timeout must count, and the next attempt go on after it: the list
// drains, each tombstone written about once (a write cut short by the
// timeout may be written again), and the store holds one member for each.
func TestSlowStoreRevocationsDrain(t *testing.T) {
	t.Parallel()
	url, px, via := proxiedRedis(t)
	open := openRedis
	const count = 768 // three chunks
	var store *setAddCounter
	o := farmtest.Options{
		NewTransport: func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
			store = &setAddCounter{Transport: open(t, via, farmName)}
			return open(t, url, farmName), store
		},
		Secret: farm.NewSecret(1),
		Tweak: func(c *farm.Config) {
			c.OpTimeout = 700 * time.Millisecond
			c.TallyInterval = -1
			c.ProbeInterval = time.Hour
			c.HealInterval = time.Hour
		},
	}
	name := farmtest.FarmName(t)
	direct := open(t, url, name)
	n1 := farmtest.Join(t, "n1", name, o)
	farmtest.WaitConnected(t, n1)

	px.SetLatency(4 * time.Millisecond)
	before := store.adds.Load()
	start := time.Now()
	n1.Node.QueueRevocations(1, count, time.Now().Add(5*time.Minute))
	farmtest.Eventually(t, 60*time.Second, "every revocation applied", func() bool { return n1.Node.PendingRevocations() == 0 })
	took := time.Since(start)
	px.SetLatency(0)
	timeouts := farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_store_write_errors_total")
	adds := store.adds.Load() - before
	t.Logf("%d revocations drained in %v: %d tombstone writes, %d store writes timed out", count, took.Round(time.Millisecond), adds, timeouts)
	if timeouts == 0 {
		t.Fatal("no chunk timed out: the store was not slow enough for the test")
	}
	// Each timed-out attempt may have cut one write short (written again).
	if adds > count+int64(timeouts) {
		t.Errorf("%d tombstone writes for %d revocations and %d timeouts: tombstones written before a timeout were written again", adds, count, timeouts)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := direct.SetMembers(ctx, farm.TombstoneKey)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != count {
		t.Errorf("the store holds %d tombstones for %d revocations", len(got), count)
	}
}
