package natsbus_test

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/metric"
)

// TestSharingRecoversAfterServerRestart: the NATS server crashes and comes
// back on the same port; the nodes serve alone meanwhile and share again
// within seconds of its return, through the bus and the store, without
// being restarted.
func TestSharingRecoversAfterServerRestart(t *testing.T) {
	t.Parallel()
	srv := startNATS(t)
	ms, _ := farmtest.Start(t, 3, &farmtest.Options{NewTransport: natsTransport(srv.URL("")), Mode: farm.Broadcast, WriteThrough: true})

	shares := func(what string) {
		t.Helper()
		before := make([][]metric.Sample, len(ms))
		for i, m := range ms {
			before[i] = m.Node.Metrics()
		}
		frozen := &tlstest.FrozenCache{}
		tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tls.VersionTLS13, frozen))
		for i, m := range ms[1:] {
			farmtest.Eventually(t, 10*time.Second, what+": "+m.Name+" received the session over the bus", func() bool {
				return farmtest.Counter(m.Node.Metrics(), "tlsfarm_farm_inserted_total") > farmtest.Counter(before[i+1], "tlsfarm_farm_inserted_total")
			})
			if !tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, frozen)).DidResume {
				t.Fatalf("%s: %s did not resume n1's session", what, m.Name)
			}
		}
		farmtest.Eventually(t, 10*time.Second, what+": n1 wrote the session to the store", func() bool {
			return farmtest.Counter(ms[0].Node.Metrics(), "tlsfarm_farm_store_writes_total") > farmtest.Counter(before[0], "tlsfarm_farm_store_writes_total")
		})
	}
	shares("before the crash")

	srv.Kill()
	farmtest.Eventually(t, 10*time.Second, "every node saw the bus go down", func() bool {
		for _, m := range ms {
			if m.Node.Connected() {
				return false
			}
		}
		return true
	})
	// Meanwhile each node serves on its own.
	frozen := &tlstest.FrozenCache{}
	tlstest.MustDial(t, ms[1].Server.Addr, farmtest.Client(tls.VersionTLS13, frozen))
	if !tlstest.MustDial(t, ms[1].Server.Addr, farmtest.Client(tls.VersionTLS13, frozen)).DidResume {
		t.Fatal("a node did not resume its own session while NATS was down")
	}

	srv.Restart()
	start := time.Now()
	farmtest.WaitConnected(t, ms...)
	t.Logf("all nodes resubscribed %v after the server came back", time.Since(start).Round(time.Millisecond))
	shares("after the restart")
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("sharing took %v to recover, want under 10s", d)
	}
}
