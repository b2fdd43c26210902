package amqpbus_test

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/amqpbus"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
)

// amqpTransport opens each member's bus on the broker at url, with opts
// (nil for the defaults). RabbitMQ gives no store: the farm runs in
// broadcast mode only.
func amqpTransport(url string, opts *amqpbus.Options) func(testing.TB, string) (transport.Bus, transport.Store) {
	return func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
		return open(t, url, farmName, opts), nil
	}
}

// dialAndSpread dials m and waits until every other member has inserted
// the session m issued, if it issued one (a TLS 1.2 resumption may keep its
// session under a reissued ticket): without a store, a peer resumes only
// what it has received.
func dialAndSpread(t *testing.T, ms []*farmtest.Member, m *farmtest.Member, ccfg *tls.Config) tls.ConnectionState {
	t.Helper()
	before := make([]uint64, len(ms))
	for i, o := range ms {
		before[i] = farmtest.Counter(o.Node.Metrics(), "tlsfarm_farm_inserted_total")
	}
	reissued := farmtest.Counter(m.Cache.Metrics(), "tlsfarm_cache_reissued_total")
	cs := tlstest.MustDial(t, m.Server.Addr, ccfg)
	if farmtest.Counter(m.Cache.Metrics(), "tlsfarm_cache_reissued_total") > reissued {
		return cs
	}
	for i, o := range ms {
		if o == m {
			continue
		}
		farmtest.Eventually(t, 5*time.Second, o.Name+" received "+m.Name+"'s session", func() bool {
			return farmtest.Counter(o.Node.Metrics(), "tlsfarm_farm_inserted_total") > before[i]
		})
	}
	return cs
}

// TestPeerSessionResumesOnOtherNode: a client that a load balancer sends
// to a random node of three each time resumes every time, mostly on nodes
// that did not issue its session, with sessions spread by the exchange
// alone, once each has arrived.
func TestPeerSessionResumesOnOtherNode(t *testing.T) {
	url := brokerURL(t)
	attempts := 100
	if testing.Short() {
		attempts = 30
	}
	for _, tv := range []struct {
		name string
		v    uint16
	}{{"TLS1.2", tls.VersionTLS12}, {"TLS1.3", tls.VersionTLS13}} {
		t.Run(tv.name, func(t *testing.T) {
			ms, _ := farmtest.Start(t, 3, &farmtest.Options{NewTransport: amqpTransport(url, nil)})
			ccfg := farmtest.Client(tv.v, &tlstest.SharedCache{})
			failed, elsewhere := farmtest.Roam(t, ms, attempts, func(m *farmtest.Member) tls.ConnectionState {
				return dialAndSpread(t, ms, m, ccfg)
			})
			if failed > 0 {
				farmtest.LogStats(t, ms)
				t.Fatalf("%d of %d resumptions failed, want none", failed, attempts)
			}
			if elsewhere < attempts/3 {
				t.Fatalf("only %d of %d resumptions crossed nodes", elsewhere, attempts)
			}
			farmtest.NoHandshakeErrors(t, ms)
		})
	}
}
