package amqpbus_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/amqpbus"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
)

// TestBacklogCountsWhatAnOldConsumerHeld: a subscriber comes back while
// the broker still counts another consumer on its queue (as it does the
// previous connection's until it finds that connection gone; here the
// test's own), which holds six messages of 512 KiB unacknowledged. Three
// more wait ready. The old consumer goes just after the subscriber's
// declare (the hook between the declare and the Consume): its six come
// back, 4.5 MiB in a queue of 4 MiB, and the broker drops the oldest. The
// subscriber must report transport.ErrMessagesLost.
//
// Before, it measured its backlog by the declare's ready count (three: no
// room could be missing), consumed, and reported nothing lost; now an
// attempt whose declare still shows a consumer is tried again.
func TestBacklogCountsWhatAnOldConsumerHeld(t *testing.T) {
	t.Parallel()
	url := brokerURL(t)
	name := farmtest.FarmName(t)
	proxy := nettest.NewProxy(t, brokerAddr(url))
	pub := open(t, url, name, nil)
	sub := open(t, viaProxy(t, url, proxy.Addr), name, &amqpbus.Options{QueueLength: 1000, QueueBytes: testQueueBytes})
	ch := brokerChannel(t, url)
	var once sync.Once
	armed := make(chan struct{})
	amqpbus.SetAfterDeclare(sub, func() {
		select {
		case <-armed:
		default:
			return
		}
		once.Do(func() {
			// The old consumer goes: what it held comes back.
			ch.Close()
			check := brokerChannel(t, url)
			farmtest.Eventually(t, 10*time.Second, "the old consumer gone", func() bool {
				q, err := check.QueueDeclarePassive(sub.Queue(), false, false, false, false, nil)
				return err == nil && q.Consumers == 0
			})
		})
	})
	l, _ := subscribeLogged(t, sub)
	if err := l.next(t, true); err != nil {
		t.Fatalf("first subscription reported %v", err)
	}
	publish(t, pub, "before")
	l.waitFor(t, "before")
	cut(t, url, proxy, l, sub)

	held := bigMessages("held", 6)
	publish(t, pub, held...)
	farmtest.Eventually(t, 10*time.Second, "six messages queued", func() bool { return queueMessages(t, url, sub.Queue()) >= 6 })
	if err := ch.Qos(6, 0, false); err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(sub.Queue(), "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 6 {
		select {
		case <-deliveries:
		case <-time.After(10 * time.Second):
			t.Fatal("the test's consumer got fewer than six messages")
		}
	}
	ready := bigMessages("ready", 3)
	publish(t, pub, ready...)
	farmtest.Eventually(t, 10*time.Second, "the new ones queued ready", func() bool {
		return queueMessages(t, url, sub.Queue()) >= 3
	})
	close(armed)
	proxy.Restore()
	if err := l.next(t, true); !errors.Is(err, transport.ErrMessagesLost) {
		t.Fatalf("back up with %v, want transport.ErrMessagesLost (the broker dropped what the old consumer gave back)", err)
	}
}
