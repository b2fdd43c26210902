package amqpbus_test

import (
	"strings"
	"testing"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/amqpbus"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// TestCloseDuringOutage: a node on RabbitMQ closes within twice its
// OpTimeout when the broker hangs or goes away with sessions queued.
func TestCloseDuringOutage(t *testing.T) {
	url := brokerURL(t)
	addr := brokerAddr(url)
	farmtest.CloseDuringOutage(t, addr, []farm.Mode{farm.Broadcast}, func(proxy string) func(testing.TB, string) (transport.Bus, transport.Store) {
		return func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
			b, err := amqpbus.Open(strings.Replace(url, addr, proxy, 1), farmName, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b.Close() })
			deleteExchangeAtEnd(t, url, b.Exchange()) // on the broker itself: the proxy is cut by then
			return b, nil
		}
	})
}
