package farm_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/logtest"
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
// minute) and counts every gap in tlsfarm_farm_bus_gaps_total.
func TestNATSSlowConsumerGapsLoggedOnce(t *testing.T) {
	t.Parallel()
	natsURL := farmtest.ServerURL(t, "NATS", "TLSFARM_NATS_URL", "nats://127.0.0.1:4222")
	var logs logtest.Buffer
	o := &farmtest.Options{
		NewTransport: func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
			return &sleepBus{Transport: natsTransportPending(t, natsURL, farmName)}, nil
		},
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	}
	ms, _ := farmtest.Start(t, 2, o)
	n1, n2 := ms[0], ms[1]
	farmtest.WaitConnected(t, ms...)
	b1 := n1.Bus.(*sleepBus)
	m := func(name string, labels ...string) uint64 {
		return farmtest.Counter(n1.Node.Metrics(), name, labels...)
	}
	c0, g0 := m("tlsfarm_farm_connects_total"), m(gapsMetric, "reason", "dropped")
	from := len(logs.String())

	b1.delay.Store(int64(time.Millisecond))
	ctx := context.Background()
	for start := time.Now(); time.Since(start) < 1500*time.Millisecond; {
		if err := n2.Node.PublishNoise(ctx, 30); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	b1.delay.Store(0)
	// n1 works off the few messages its client queued, and the last gap
	// held back (250 ms at most) is reported.
	time.Sleep(time.Second)

	gaps := m(gapsMetric, "reason", "dropped") - g0
	lines := logs.String()[from:]
	lost := strings.Count(lines, "lost the bus")
	connected := strings.Count(lines, "connected to the bus")
	gapLines := strings.Count(lines, `msg="farm: the bus dropped messages`)
	t.Logf("nats.go dropped %d messages in %d episodes; gaps counted %d; log lines: %d gap, %d lost, %d connected",
		b1.Dropped(), b1.SlowConsumers(), gaps, gapLines, lost, connected)
	if b1.Dropped() == 0 {
		t.Fatal("nats.go dropped nothing: no slow consumer to test")
	}
	if gaps < 2 {
		t.Errorf("%s counted %d gaps for the episode; want several (one at most every 250 ms)", gapsMetric, gaps)
	}
	if got := m("tlsfarm_farm_connects_total") - c0; got != 0 {
		t.Errorf("tlsfarm_farm_connects_total rose by %d for the gaps; want 0", got)
	}
	if lost != 0 || connected != 0 {
		t.Errorf("the gaps were logged as %d losses and %d connects of the bus; want none", lost, connected)
	}
	if gapLines != 1 {
		t.Errorf("%d log lines for the episode's gaps; want 1 (at most one a minute)", gapLines)
	} else if !strings.Contains(lines, "gaps=1 ") {
		t.Errorf("the first gap's line does not count 1 gap: %q", lines)
	}
	if !n1.Node.Connected() {
		t.Error("n1 is not connected after the episode")
	}
}
