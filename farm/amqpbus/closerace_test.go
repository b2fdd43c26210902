package amqpbus_test

import (
	"errors"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
)

// TestCloseDuringSubscribe: Close while a subscription is connecting (on
// a slow link: every read through the proxy takes 100 ms) leaves no queue
// on the broker, and the subscription does not come up. The subscription
// had passed its check of Close before Close ran, and declared its queue
// after Close had deleted the queues it knew: the queue stayed on the
// broker, fed with every message of the farm, for KeepQueue after the
// subscription ended, and the subscription consumed on a closed Bus.
func TestCloseDuringSubscribe(t *testing.T) {
	url := brokerURL(t)
	proxy := nettest.NewProxy(t, brokerAddr(url))
	proxy.SetLatency(100 * time.Millisecond)
	b := open(t, viaProxy(t, url, proxy.Addr), farmtest.FarmName(t), nil)
	ch := brokerChannel(t, url)
	t.Cleanup(func() { ch.QueueDelete(b.Queue(), false, false, false) })
	l, stop := subscribeLogged(t, b)
	time.Sleep(300 * time.Millisecond) // connecting
	b.Close()
	// Long enough for the subscription to be up on a Bus that was not
	// closed (it is up about 2 s after it began, here).
	time.Sleep(4 * time.Second)
	select {
	case s := <-l.states:
		if s.up {
			t.Fatal("the subscription came up after Close")
		}
	default:
	}
	stop()
	_, err := ch.QueueDeclarePassive(b.Queue(), false, false, false, false, nil)
	var ae *amqp.Error
	if !errors.As(err, &ae) || ae.Code != amqp.NotFound {
		t.Fatalf("after Close, the queue: %v, want not found", err)
	}
}
