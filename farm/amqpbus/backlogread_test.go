package amqpbus_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/amqpbus"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
)

// TestBacklogReadLosesNothing: a subscriber comes back to a backlog that
// may be full by bytes (5 messages of 512 KiB, 2.5 MiB, under a queue of
// 4 MiB), which it reads before it reports itself up. While it holds that
// backlog (the broker has sent it every message, none acknowledged), 4
// more of 512 KiB are published. The broker counts only ready messages
// against a queue's bounds, so it takes them all; had the subscriber
// given the backlog back to the queue (as it once did, closing the
// channel it read it on), the broker would have put the queue over its
// 4 MiB and dropped its oldest message, silently, after the subscriber
// had measured the backlog as not full. The subscriber reports nothing
// lost, and all 9 arrive, in order.
func TestBacklogReadLosesNothing(t *testing.T) {
	url := brokerURL(t)
	pub, sub, l, proxy := cutOffSubscriber(t, url, &amqpbus.Options{QueueLength: 1000, QueueBytes: testQueueBytes})
	cut(t, url, proxy, l, sub)
	backlog := bigMessages("backlog", 5)
	publish(t, pub, backlog...)
	// Slow the subscriber's reads, so that it holds the backlog a while
	// once the broker has sent it.
	proxy.SetLatency(20 * time.Millisecond)
	proxy.Restore()
	ch := brokerChannel(t, url)
	farmtest.Eventually(t, 20*time.Second, "the broker sent the backlog to a consumer", func() bool {
		q, err := ch.QueueDeclarePassive(sub.Queue(), false, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		return q.Consumers == 1 && q.Messages == 0
	})
	proxy.Freeze()
	later := bigMessages("later", 4)
	publish(t, pub, later...)
	proxy.SetLatency(0)
	proxy.Thaw()
	if err := l.next(t, true); err != nil {
		t.Fatalf("back up with %v, want nil (nothing was dropped)", err)
	}
	l.waitFor(t, later...)
	publish(t, pub, "after")
	l.waitFor(t, "after")
	want := append(append(append([]string{"before"}, names(backlog)...), names(later)...), "after")
	if got := l.delivered(); !slices.Equal(got, want) {
		t.Fatalf("delivered %q, want %q", got, want)
	}
}

// TestBacklogHeldAtEndReported: a subscription that ends (its context
// done) while it reads its backlog has taken messages from the queue, and
// acknowledged them, that it never delivers; the next Subscribe on the
// Bus, on the same queue, reports transport.ErrMessagesLost rather than
// nil for a queue that lost nothing on the broker.
func TestBacklogHeldAtEndReported(t *testing.T) {
	url := brokerURL(t)
	name := farmtest.FarmName(t)
	proxy := nettest.NewProxy(t, brokerAddr(url))
	pub := open(t, url, name, nil)
	sub := open(t, viaProxy(t, url, proxy.Addr), name, &amqpbus.Options{QueueLength: 1000, QueueBytes: testQueueBytes, Prefetch: 2})
	l, stop := subscribeLogged(t, sub)
	if err := l.next(t, true); err != nil {
		t.Fatalf("first subscription reported %v", err)
	}
	cut(t, url, proxy, l, sub)
	publish(t, pub, bigMessages("backlog", 5)...)
	proxy.SetLatency(20 * time.Millisecond)
	proxy.Restore()
	// With a prefetch of 2, the queue holds 2 ready fewer than 5 once the
	// subscriber has acknowledged one.
	ch := brokerChannel(t, url)
	farmtest.Eventually(t, 20*time.Second, "the subscriber acknowledged part of its backlog", func() bool {
		q, err := ch.QueueDeclarePassive(sub.Queue(), false, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		return q.Messages <= 2
	})
	stop()
	proxy.SetLatency(0)
	if l.has(bigMessages("backlog", 1)[0]) {
		t.Fatal("the first message of the backlog was delivered: the subscription was up")
	}
	l2, _ := subscribeLogged(t, sub)
	if err := l2.next(t, true); !errors.Is(err, transport.ErrMessagesLost) {
		t.Fatalf("subscribed again with %v, want transport.ErrMessagesLost", err)
	}
}
