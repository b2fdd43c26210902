package farm_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// lossAfterRead is a Redis transport whose store loses its data, once
// armed, just after the node has read the store's generation record and
// before it renews it: as a Redis restarted empty between the two
// commands, which go-redis's retry then writes to.
type lossAfterRead struct {
	*redisbus.Transport
	armed atomic.Bool
	lose  func()
}

func (l *lossAfterRead) GetRecord(ctx context.Context, key string) ([]byte, error) {
	v, err := l.Transport.GetRecord(ctx, key)
	if key == "generation" && l.armed.CompareAndSwap(true, false) {
		l.lose()
	}
	return v, err
}

// TestGenerationRenewDoesNotHideLoss: a store that loses its data between
// the node's read of the generation record and its renewal must still be
// found to have lost it: the renewal must not write the old generation
// into the empty store, where neither this node nor any other would see a
// change, and the sessions it held would never be written back.
func TestGenerationRenewDoesNotHideLoss(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rc.Close()
	var tr *lossAfterRead
	o := &farmtest.Options{
		Mode: farm.StoreOnly,
		NewTransport: func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
			inner := openRedis(t, srv.URL(), farmName)
			tr = &lossAfterRead{Transport: inner, lose: func() { rc.FlushAll(context.Background()) }}
			return tr, tr
		},
		Tweak: func(c *farm.Config) { c.HealInterval = 200 * time.Millisecond },
	}
	ms, _ := farmtest.Start(t, 1, o)
	n1 := ms[0]
	ids, _ := farmtest.Issue(t, n1, 1)
	waitStored(t, n1, ids[0])
	farmtest.Eventually(t, 5*time.Second, "n1 read the store's generation", func() bool { return n1.Node.StoreGeneration() != nil })
	tr.armed.Store(true)
	farmtest.Eventually(t, 5*time.Second, "the store lost its data", func() bool { return !tr.armed.Load() })
	farmtest.Eventually(t, 10*time.Second, "n1 wrote its session back", func() bool { return stored(n1, ids[0]) })
}

// slowGeneration is a Redis transport whose reads of the store's
// generation record take delay more.
type slowGeneration struct {
	*redisbus.Transport
	delay time.Duration
}

func (s *slowGeneration) GetRecord(ctx context.Context, key string) ([]byte, error) {
	if key == "generation" {
		select {
		case <-time.After(s.delay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return s.Transport.GetRecord(ctx, key)
}

// TestJoinReadsGeneration: Join returns with the store's generation read
// (within its wait, OpTimeout), so that a store that loses its data as
// soon as the node serves is seen to have lost it: before, the first read
// came after Join on the healer's goroutine, and a loss before it went
// unseen (no write-back).
func TestJoinReadsGeneration(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	o := &farmtest.Options{
		Secret: farm.NewSecret(1),
		NewTransport: func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
			tr := &slowGeneration{Transport: openRedis(t, srv.URL(), farmName), delay: 300 * time.Millisecond}
			return tr, tr
		},
		Tweak: func(c *farm.Config) { c.HealInterval = time.Hour },
	}
	m := farmtest.Join(t, "n1", farmtest.FarmName(t), *o)
	if m.Node.StoreGeneration() == nil {
		t.Fatal("Join returned before the node read the store's generation")
	}
}
