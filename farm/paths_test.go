package farm_test

import (
	"context"
	"crypto/tls"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestCatchUpThroughStorePath: where the store has a path of its own (a
// NATS bus, a Redis store) the store's path keeps and replays the backlog.
// In store-only mode the store is the only way a peer learns of a session,
// so every session made on n1 while Redis is down must resume on n2 once
// Redis returns.
func TestCatchUpThroughStorePath(t *testing.T) {
	t.Parallel()
	natsURL := farmtest.ServerURL(t, "NATS", "TLSFARM_NATS_URL", "nats://127.0.0.1:4222")
	srv := redistest.Start(t)
	ms, _ := farmtest.Start(t, 2, &farmtest.Options{
		Mode:         farm.StoreOnly,
		NewTransport: natsBusRedisStore(natsURL, srv.URL()),
		Tweak: func(c *farm.Config) {
			c.OpTimeout = 300 * time.Millisecond
			c.BreakerCooldown = 500 * time.Millisecond
		},
	})
	srv.Kill()
	const n = 12
	var frozen [n]*tlstest.FrozenCache
	for i := range frozen {
		frozen[i] = &tlstest.FrozenCache{}
		tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tls.VersionTLS13, frozen[i]))
	}
	farmtest.Eventually(t, 5*time.Second, "n1's sessions in its backlog", func() bool { return int(farmtest.Counter(ms[0].Node.Metrics(), "tlsfarm_farm_backlog_length")) == n })
	if st := ms[0].Node.Metrics(); farmtest.Counter(st, "tlsfarm_farm_publish_errors_total") != 0 {
		t.Fatalf("the bus failed while only the store was down: %+v", st)
	}
	srv.Restart()
	back := time.Now()
	for i := range frozen {
		for !tlstest.MustDial(t, ms[1].Server.Addr, farmtest.Client(tls.VersionTLS13, frozen[i])).DidResume {
			if time.Since(back) > 10*time.Second {
				farmtest.LogStats(t, ms)
				t.Fatalf("session %d made while the store was down does not resume on n2 10s after it returned", i)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if st := ms[0].Node.Metrics(); int(farmtest.Counter(st, "tlsfarm_farm_backlog_length")) != 0 {
		t.Fatalf("backlog not emptied: %+v", st)
	}
	t.Logf("all %d sessions resume on n2 %v after the store returned", n, time.Since(back))
}

// downBus is a real bus whose publishes fail while down is set.
type downBus struct {
	transport.Bus
	down atomic.Bool
}

func (b *downBus) Publish(ctx context.Context, msgs ...[]byte) error {
	if b.down.Load() {
		return errors.New("bus down (test)")
	}
	return b.Bus.Publish(ctx, msgs...)
}

// TestJoinContextEndDrainsRevocations: ending Join's context closes the node
// as Close does, and so gives pending revocations their last try.
func TestJoinContextEndDrainsRevocations(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	cache, err := session.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	tr, err := redisbus.Open(url, farmtest.FarmName(t))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	bus := &downBus{Bus: tr}
	bus.down.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n, err := farm.Join(ctx, farm.Config{Farm: farmtest.FarmName(t), Secrets: []farm.Secret{farm.NewSecret(1)}, Cache: cache, Bus: bus, Store: tr})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	id := cache.NewID()
	if err := cache.Insert(id, session.Record{State: []byte("s"), Expires: time.Now().Add(time.Hour)}, session.OriginPeer); err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	st, err := n.RevokeSession(rctx, id)
	rcancel()
	if err != nil || st != farm.RevokePending || n.PendingRevocations() != 1 {
		t.Fatalf("revoke with the bus failing: %v %v, %d pending", st, err, n.PendingRevocations())
	}
	cancel() // the revoker stops; Close's last try finds the bus back
	bus.down.Store(false)
	farmtest.Eventually(t, 5*time.Second, "the pending revocation applied by the close", func() bool { return n.PendingRevocations() == 0 })
	if s := n.Metrics(); farmtest.Counter(s, "tlsfarm_farm_published_total", "kind", "revocation") != 1 {
		t.Fatalf("published revocations %d, want 1", farmtest.Counter(s, "tlsfarm_farm_published_total", "kind", "revocation"))
	}
}
