package farm_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/logtest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// gapsMetric is the farm's count of gaps in a subscription that stayed up,
// for messages its bus client dropped.
const gapsMetric = "tlsfarm_farm_bus_gaps_total"

// TestNATSSlowConsumerGapsLoggedOnce: over the NATS server, n1 handles each
// bus message in 1 ms while n2 publishes some 3,000 a second for 1.5 s
// (pending limit slowPending): a slow consumer episode, which the transport
// reports as several gaps in the subscription (at most every 250 ms). The
// farm settles each as an outage, but must neither log it as a loss of the
// bus and a connect ("lost the bus", "connected to the bus": up to four
// pairs a second before) nor count it in tlsfarm_farm_connects_total: it
// logs one line for the episode (the first gap, then at most once a
// minute) and counts every gap in tlsfarm_farm_bus_gaps_total; nor may the
// settle log each gap (the cache dropped, without a store; checked against
// a Redis store). A second
// episode, a minute later by the nodes' clocks, logs one more line, which
// counts the gaps since the first line.
func TestNATSSlowConsumerGapsLoggedOnce(t *testing.T) {
	t.Parallel()
	natsURL := farmtest.ServerURL(t, "NATS", "TLSFARM_NATS_URL", "nats://127.0.0.1:4222")
	for _, stored := range []bool{false, true} {
		name := "no-store"
		if stored {
			name = "store"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			testGapsLoggedOnce(t, natsURL, stored)
		})
	}
}

// perGap are log lines the farm writes for an outage, which a gap in a
// subscription that stayed up must not bring.
var perGap = []string{"lost the bus", "connected to the bus", "dropped the cached sessions", "checked the cache against the store"}

func testGapsLoggedOnce(t *testing.T, natsURL string, stored bool) {
	var redisURL string
	if stored {
		redisURL = redistest.URL(t)
	}
	var logs logtest.Buffer
	var skip atomic.Int64
	o := &farmtest.Options{
		NewTransport: func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
			b := &sleepBus{Transport: natsTransportPending(t, natsURL, farmName)}
			if redisURL == "" {
				return b, nil
			}
			store, err := redisbus.Open(redisURL, farmName)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { store.Close() })
			return b, store
		},
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		// The nodes' clocks, moved on a minute between the episodes.
		Tweak: func(c *farm.Config) { c.Now = func() time.Time { return time.Now().Add(time.Duration(skip.Load())) } },
	}
	ms, _ := farmtest.Start(t, 2, o)
	n1, n2 := ms[0], ms[1]
	farmtest.WaitConnected(t, ms...)
	b1 := n1.Bus.(*sleepBus)
	m := func(name string, labels ...string) uint64 {
		return farmtest.Counter(n1.Node.Metrics(), name, labels...)
	}
	c0, g0 := m("tlsfarm_farm_connects_total"), m(gapsMetric, "reason", "dropped")
	// The settle still runs: a pass over the cache against the store, or
	// the cache dropped.
	settled := func() uint64 {
		if stored {
			return m("tlsfarm_farm_reconciles_total", "result", "done")
		}
		return m("tlsfarm_farm_reconciles_total", "result", "dropped")
	}
	s0 := settled()
	from := len(logs.String())

	episode := func() {
		t.Helper()
		b1.delay.Store(int64(time.Millisecond))
		ctx := context.Background()
		for start := time.Now(); time.Since(start) < 1500*time.Millisecond; {
			if err := n2.Node.PublishNoise(ctx, 30); err != nil {
				t.Fatal(err)
			}
			time.Sleep(10 * time.Millisecond)
		}
		b1.delay.Store(0)
		// n1 works off the few messages its client queued, and the
		// last gap held back (250 ms at most) is reported.
		time.Sleep(time.Second)
	}
	episode()

	gaps := m(gapsMetric, "reason", "dropped") - g0
	lines := logs.String()[from:]
	gapLines := strings.Count(lines, `msg="farm: the bus dropped messages`)
	t.Logf("nats.go dropped %d messages in %d episodes; gaps counted %d; %d gap log lines; all lines: %q",
		b1.Dropped(), b1.SlowConsumers(), gaps, gapLines, lines)
	if b1.Dropped() == 0 {
		t.Fatal("nats.go dropped nothing: no slow consumer to test")
	}
	if got := settled() - s0; got == 0 {
		t.Error("no reconcile pass or cache drop for the episode's gaps: the settle did not run")
	}
	if gaps < 2 {
		t.Errorf("%s counted %d gaps for the episode; want several (one at most every 250 ms)", gapsMetric, gaps)
	}
	if got := m("tlsfarm_farm_connects_total") - c0; got != 0 {
		t.Errorf("tlsfarm_farm_connects_total rose by %d for the gaps; want 0", got)
	}
	for _, l := range perGap {
		if n := strings.Count(lines, l); n != 0 {
			t.Errorf("%d log lines %q for the gaps; want none", n, l)
		}
	}
	if gapLines != 1 {
		t.Errorf("%d log lines for the episode's gaps; want 1 (at most one a minute)", gapLines)
	} else if !strings.Contains(lines, "gaps=1 ") {
		t.Errorf("the first gap's line does not count 1 gap: %q", lines)
	}
	if !n1.Node.Connected() {
		t.Error("n1 is not connected after the episode")
	}

	// A minute on, the next gap logs again, with the gaps since the
	// first line.
	skip.Store(int64(time.Minute + time.Second))
	g1 := m(gapsMetric, "reason", "dropped")
	from = len(logs.String())
	episode()
	gaps2 := m(gapsMetric, "reason", "dropped") - g1
	lines = logs.String()[from:]
	t.Logf("second episode: gaps counted %d; log lines: %q", gaps2, lines)
	if gaps2 == 0 {
		t.Fatal("no gap counted in the second episode")
	}
	if n := strings.Count(lines, `msg="farm: the bus dropped messages`); n != 1 {
		t.Errorf("%d log lines for the second episode's gaps; want 1", n)
	} else if want := fmt.Sprintf("gaps=%d ", gaps); !strings.Contains(lines, want) {
		// The first episode's gaps after its line, and the second's
		// first, which logs.
		t.Errorf("the second episode's line does not count the gaps since the first line (want %s): %q", want, lines)
	}
	for _, l := range perGap {
		if n := strings.Count(lines, l); n != 0 {
			t.Errorf("%d log lines %q for the second episode's gaps; want none", n, l)
		}
	}
}
