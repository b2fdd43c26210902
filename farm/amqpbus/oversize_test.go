package amqpbus_test

import (
	"bytes"
	"errors"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/amqpbus"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
)

// TestOversizedMessageNotRead: someone who may publish to the farm's
// exchange, without the farm secret, publishes 4 messages of 16 MiB (the
// broker takes up to 128 MiB by default). A subscriber never delivers a
// message over transport.MaxMessageSize; it does not read one into memory
// either: receiving the four, and a small message after them, allocates
// far less than one of them (amqp091-go alone read each whole, 64 MiB and
// more in all). The subscription stays up, and the long messages are
// acknowledged, not delivered again.
func TestOversizedMessageNotRead(t *testing.T) {
	url := brokerURL(t)
	name := farmtest.FarmName(t)
	pub := open(t, url, name, nil)
	// The bound on bytes would drop the long messages: none here.
	sub := open(t, url, name, &amqpbus.Options{QueueBytes: -1})
	l, _ := subscribeLogged(t, sub)
	if err := l.next(t, true); err != nil {
		t.Fatalf("subscribed with %v", err)
	}
	publish(t, pub, "before")
	l.waitFor(t, "before")

	big := bytes.Repeat([]byte("x"), 16<<20)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range 4 {
		publishRaw(t, url, sub.Exchange(), big)
	}
	publish(t, pub, "after")
	l.waitFor(t, "after")
	runtime.ReadMemStats(&after)
	allocated := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated %d KiB while receiving 4 messages of 16 MiB", allocated>>10)
	if allocated > 8<<20 {
		t.Errorf("allocated %d MiB while receiving 4 messages of 16 MiB, want under 8", allocated>>20)
	}
	l.mu.Lock()
	for _, m := range l.msgs {
		if len(m) > transport.MaxMessageSize || len(m) == 0 {
			t.Errorf("delivered a message of %d bytes", len(m))
		}
	}
	l.mu.Unlock()
	select {
	case s := <-l.states:
		t.Fatalf("the subscription reported up=%v (%v)", s.up, s.err)
	default:
	}
	farmtest.Eventually(t, 10*time.Second, "the long messages acknowledged", func() bool {
		return queueMessages(t, url, sub.Queue()) == 0
	})
}

// TestOversizedMessageCountedInBacklog: a message too long to read still
// counts, by its size, when a subscriber that comes back measures its
// backlog: one of 2 MiB and three of 512 KiB, published while it was cut
// off, leave no room for a largest message in its queue of 4 MiB, and it
// reports transport.ErrMessagesLost. It delivers the three.
func TestOversizedMessageCountedInBacklog(t *testing.T) {
	url := brokerURL(t)
	pub, sub, l, proxy := cutOffSubscriber(t, url, &amqpbus.Options{QueueLength: 1000, QueueBytes: testQueueBytes})
	cut(t, url, proxy, l, sub)
	// Confirmed, so in the queue before the three: published without a
	// confirm, it could still be on its way when the subscriber declared
	// its queue, which counted the three and "before" (1.5 MiB, room for a
	// largest message) and then read just those.
	publishRaw(t, url, sub.Exchange(), bytes.Repeat([]byte("x"), 2<<20))
	during := bigMessages("during", 3)
	publish(t, pub, during...)
	// "before" is back in the queue, at its head, when the cut came
	// between its delivery and its acknowledgement.
	if got := queueMessages(t, url, sub.Queue()); got != 4 && got != 5 {
		t.Fatalf("the queue holds %d messages, want 4 (or 5, with before)", got)
	}
	proxy.Restore()
	if err := l.next(t, true); !errors.Is(err, transport.ErrMessagesLost) {
		t.Fatalf("back up with %v, want transport.ErrMessagesLost", err)
	}
	l.waitFor(t, during...)
	if got, want := l.delivered(), append([]string{"before"}, names(during)...); !slices.Equal(got, want) {
		t.Fatalf("delivered %q, want %q", got, want)
	}
}

// TestOversizedMessageOnSlowLink: skipping a long message's body takes a
// while on a slow link (here 16 MiB through a proxy that holds every 32 KiB
// for 10 ms: about 5 s), longer than amqp091-go waits for a frame (three
// half heartbeat intervals: 1.5 s with a heartbeat of 1 s). The guard
// hands it a heartbeat frame for each body frame it skips, so the
// connection stays up, and the message is skipped once: without them,
// amqp091-go dropped the connection during the skip, the broker gave the
// message back, and the next connection did the same, for ever.
func TestOversizedMessageOnSlowLink(t *testing.T) {
	url := brokerURL(t)
	name := farmtest.FarmName(t)
	proxy := nettest.NewProxy(t, brokerAddr(url))
	pub := open(t, url, name, nil)
	sub := open(t, viaProxy(t, url, proxy.Addr), name, &amqpbus.Options{QueueBytes: -1, Heartbeat: time.Second})
	l, _ := subscribeLogged(t, sub)
	if err := l.next(t, true); err != nil {
		t.Fatalf("subscribed with %v", err)
	}
	proxy.SetLatency(10 * time.Millisecond)
	publishRaw(t, url, sub.Exchange(), bytes.Repeat([]byte("x"), 16<<20))
	publish(t, pub, "after")
	farmtest.Eventually(t, 30*time.Second, "the message after the long one delivered", func() bool { return l.has("after") })
	select {
	case s := <-l.states:
		t.Fatalf("the subscription reported up=%v (%v)", s.up, s.err)
	default:
	}
}
