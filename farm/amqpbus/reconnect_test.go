package amqpbus_test

import (
	"crypto/tls"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/amqpbus"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/testenv"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
)

// closeConnections has the broker close every connection whose
// connection_name is name, as it does when an operator or a failover
// closes them, and returns how many it closed.
func closeConnections(t *testing.T, name string) int {
	t.Helper()
	out, err := exec.Command("rabbitmqctl", "-q", "list_connections", "--no-table-headers", "pid", "client_properties").CombinedOutput()
	if err != nil {
		testenv.Skip(t, "rabbitmqctl list_connections does not work here: %v: %s", err, out)
	}
	n := 0
	for _, line := range strings.Split(string(out), "\n") {
		pid, props, ok := strings.Cut(line, "\t")
		if !ok || !strings.Contains(props, `{"connection_name","`+name+`"}`) {
			continue
		}
		if out, err := exec.Command("rabbitmqctl", "-q", "close_connection", pid, "tlsfarm test").CombinedOutput(); err != nil {
			t.Fatalf("rabbitmqctl close_connection: %v: %s", err, out)
		}
		n++
	}
	return n
}

// TestSubscriberRecoversAfterBrokerClosesConnection: the broker closes a
// node's connections (its subscription's and its publisher's); the node
// reports the bus down, reconnects on its own, and shares again both ways
// without being restarted.
func TestSubscriberRecoversAfterBrokerClosesConnection(t *testing.T) {
	url := brokerURL(t)
	if _, err := exec.LookPath("rabbitmqctl"); err != nil {
		testenv.Skip(t, "rabbitmqctl is not installed")
	}
	victim := farmtest.FarmName(t)
	name, secret := farmtest.FarmName(t), farm.NewSecret(1)
	ms := []*farmtest.Member{
		farmtest.Join(t, "n1", name, farmtest.Options{NewTransport: amqpTransport(url, nil), Secret: secret}),
		farmtest.Join(t, "n2", name, farmtest.Options{NewTransport: amqpTransport(url, &amqpbus.Options{Name: victim}), Secret: secret}),
	}
	farmtest.WaitConnected(t, ms...)
	ccfg := farmtest.Client(tls.VersionTLS13, &tlstest.SharedCache{})
	dialAndSpread(t, ms, ms[0], ccfg)
	dialAndSpread(t, ms, ms[1], ccfg)

	connects := farmtest.Counter(ms[1].Node.Metrics(), "tlsfarm_farm_connects_total")
	start := time.Now()
	if n := closeConnections(t, victim); n != 3 {
		t.Fatalf("closed %d connections of the node, want 3 (subscriber, publisher and health probe)", n)
	}
	farmtest.Eventually(t, 10*time.Second, "n2 resubscribed", func() bool {
		return ms[1].Node.Connected() && farmtest.Counter(ms[1].Node.Metrics(), "tlsfarm_farm_connects_total") > connects
	})
	t.Logf("n2 resubscribed within %v of the start of rabbitmqctl (which takes about a second per call)", time.Since(start).Round(time.Millisecond))
	// Both ways: n1's sessions reach n2's new queue, and n2 publishes again.
	if !dialAndSpread(t, ms, ms[0], ccfg).DidResume {
		t.Fatal("n1 did not resume n2's session")
	}
	if !dialAndSpread(t, ms, ms[1], ccfg).DidResume {
		t.Fatal("n2 did not resume n1's session after reconnecting")
	}
}
