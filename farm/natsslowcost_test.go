package farm_test

import (
	"context"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/farm/natsbus/natsembed"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/testenv"
)

// sleepBus is a NATS transport whose node handles each bus message slowly
// (a sleep before deliver), as a node that cannot keep up.
type sleepBus struct {
	*natsbus.Transport
	delay atomic.Int64 // per message, in ns; 0 for none
}

func (s *sleepBus) Subscribe(ctx context.Context, deliver func([]byte), state func(bool, error)) error {
	return s.Transport.Subscribe(ctx, func(msg []byte) {
		if d := s.delay.Load(); d > 0 {
			time.Sleep(time.Duration(d))
		}
		deliver(msg)
	}, state)
}

// TestNATSSlowConsumerEpisodeCost measures what a sustained slow consumer
// costs its node: n1 handles each message in 1 ms while n2 publishes some
// 3,000 messages a second for 2 s (pending limit 16), with 500 sessions
// cached and a Redis store. It logs the gaps reported, the reconcile passes
// and records read, the re-send requests, and the tallies' losses. Run
// with TLSFARM_MEASURE=1.
func TestNATSSlowConsumerEpisodeCost(t *testing.T) {
	if os.Getenv("TLSFARM_MEASURE") == "" {
		t.Skip("a measurement: TLSFARM_MEASURE=1")
	}
	var srv *natsembed.Server
	testenv.OnFreePort(t, func(port int) (err error) {
		srv, err = natsembed.Start(&natsembed.Config{Port: port, Dir: t.TempDir(), StartTimeout: testenv.StartTimeout})
		return err
	})
	t.Cleanup(func() { srv.Shutdown() })
	natsURL, redisURL := srv.URL(), redistest.URL(t)
	o := &farmtest.Options{NewTransport: func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
		nt := natsTransportPending(t, natsURL, farmName)
		store, err := redisbus.Open(redisURL, farmName)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { store.Close() })
		return &sleepBus{Transport: nt}, store
	}}
	ms, _ := farmtest.Start(t, 2, o)
	n1, n2 := ms[0], ms[1]
	ids, _ := farmtest.Issue(t, n2, 500)
	farmtest.Eventually(t, 10*time.Second, "n1 holds the sessions", func() bool {
		for _, id := range ids {
			if _, ok := lookup(n1.Cache, id); !ok {
				return false
			}
		}
		return true
	})
	time.Sleep(3 * time.Second) // past the tallies' baselines
	b1 := n1.Bus.(*sleepBus)
	m := func(name string, labels ...string) uint64 {
		return farmtest.Counter(n1.Node.Metrics(), name, labels...)
	}
	c0, p0, r0 := m(gapsMetric, "reason", "dropped"), m("tlsfarm_farm_reconciles_total", "result", "done"), m("tlsfarm_farm_reconcile_total", "result", "checked")
	a0, l0 := m("tlsfarm_farm_lifecycle_resend_total", "event", "sent"), m("tlsfarm_farm_tallies_total", "event", "loss")
	b1.delay.Store(int64(time.Millisecond))
	start := time.Now()
	ctx := context.Background()
	for time.Since(start) < 2*time.Second {
		if err := n2.Node.PublishNoise(ctx, 30); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	b1.delay.Store(0)
	time.Sleep(4 * time.Second) // settles, and the tallies report
	t.Logf("dropped %d in %d episodes; gaps %d; reconcile passes %d, records read %d; re-send requests sent %d; tally losses %d",
		b1.Dropped(), b1.SlowConsumers(), m(gapsMetric, "reason", "dropped")-c0,
		m("tlsfarm_farm_reconciles_total", "result", "done")-p0, m("tlsfarm_farm_reconcile_total", "result", "checked")-r0,
		m("tlsfarm_farm_lifecycle_resend_total", "event", "sent")-a0, m("tlsfarm_farm_tallies_total", "event", "loss")-l0)
}

func natsTransportPending(t testing.TB, url, farmName string) *natsbus.Transport {
	tr, err := natsbus.Open(url, farmName, &natsbus.Options{PendingMsgs: slowPending})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}
