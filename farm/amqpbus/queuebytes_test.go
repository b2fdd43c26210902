package amqpbus_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/tlsfarm/tlsfarm/farm/amqpbus"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
)

// The byte-bound tests give a queue 4 MiB (Options.QueueBytes) and fill it
// with messages of 512 KiB: it holds 8 of them; a subscriber that comes
// back to more than 3 MiB (no room for a message of
// transport.MaxMessageSize) reports a loss.
const (
	testQueueBytes = 4 << 20
	bigMessage     = 512 << 10
)

// bigMessages returns n messages of bigMessage bytes, each starting with
// its name (prefix and number) followed by a space.
func bigMessages(prefix string, n int) []string {
	var msgs []string
	for i := range n {
		name := fmt.Sprintf("%s-%02d ", prefix, i)
		msgs = append(msgs, name+strings.Repeat("x", bigMessage-len(name)))
	}
	return msgs
}

// names returns the names of msgs (see bigMessages), in order.
func names(msgs []string) []string {
	var out []string
	for _, m := range msgs {
		name, _, _ := strings.Cut(m, " ")
		out = append(out, name)
	}
	return out
}

// delivered returns the names of what l delivered, each once, in the
// order first delivered.
func (l *stateLog) delivered() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, m := range names(l.msgs) {
		if !slices.Contains(out, m) {
			out = append(out, m)
		}
	}
	return out
}

// queueMessages returns how many messages queue holds, ready.
func queueMessages(t *testing.T, url, queue string) int {
	t.Helper()
	q, err := brokerChannel(t, url).QueueDeclarePassive(queue, false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return q.Messages
}

// cut cuts sub's connections (proxy) and waits until the subscription
// reports down and the broker has dropped its consumer, so that what is
// published next waits in the queue.
func cut(t *testing.T, url string, proxy *nettest.Proxy, l *stateLog, sub *amqpbus.Bus) {
	t.Helper()
	proxy.Cut()
	if err := l.next(t, false); err == nil {
		t.Fatal("the subscription reported down with no error")
	}
	ch := brokerChannel(t, url)
	farmtest.Eventually(t, 10*time.Second, "the broker dropped the consumer", func() bool {
		q, err := ch.QueueDeclarePassive(sub.Queue(), false, false, false, false, nil)
		return err != nil || q.Consumers == 0
	})
}

// cutOffSubscriber returns a publishing bus and a subscribing one (opts)
// of one farm, the subscriber behind a proxy, subscribed, with a message
// delivered.
func cutOffSubscriber(t *testing.T, url string, opts *amqpbus.Options) (pub, sub *amqpbus.Bus, l *stateLog, proxy *nettest.Proxy) {
	t.Helper()
	name := farmtest.FarmName(t)
	proxy = nettest.NewProxy(t, brokerAddr(url))
	pub = open(t, url, name, nil)
	sub = open(t, viaProxy(t, url, proxy.Addr), name, opts)
	l, _ = subscribeLogged(t, sub)
	if err := l.next(t, true); err != nil {
		t.Fatalf("first subscription reported %v", err)
	}
	publish(t, pub, "before")
	l.waitFor(t, "before")
	return pub, sub, l, proxy
}

// TestQueueBytesBound: a subscriber's queue is bounded by bytes
// (Options.QueueBytes, x-max-length-bytes) as well as by messages. While
// the subscriber is cut off, 12 messages of 512 KiB are published, 6 MiB
// in all: the queue of 4 MiB keeps the newest 8 (the broker drops the
// oldest, as on x-max-length), far fewer than its QueueLength of 1000;
// back up, the subscriber reports transport.ErrMessagesLost and receives
// those 8, in order. With QueueBytes negative (no byte bound) the queue
// keeps all 12, and the subscriber reports nothing lost.
func TestQueueBytesBound(t *testing.T) {
	url := brokerURL(t)
	for _, tc := range []struct {
		name  string
		bytes int64
		kept  int
	}{{"bounded", testQueueBytes, testQueueBytes / bigMessage}, {"unbounded", -1, 12}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pub, sub, l, proxy := cutOffSubscriber(t, url, &amqpbus.Options{QueueLength: 1000, QueueBytes: tc.bytes})
			cut(t, url, proxy, l, sub)
			during := bigMessages("during", 12)
			publish(t, pub, during...)
			// "before" is back in the queue, at its head, when the cut
			// came between its delivery and its acknowledgement: the
			// byte bound drops it first.
			if got := queueMessages(t, url, sub.Queue()); got != tc.kept && !(tc.bytes < 0 && got == tc.kept+1) {
				t.Fatalf("the queue holds %d messages of 512 KiB, want %d", got, tc.kept)
			}
			proxy.Restore()
			err := l.next(t, true)
			if lost := tc.kept < len(during); lost && !errors.Is(err, transport.ErrMessagesLost) {
				t.Fatalf("back up with %v, want transport.ErrMessagesLost", err)
			} else if !lost && err != nil {
				t.Fatalf("back up with %v, want nil", err)
			}
			publish(t, pub, "after")
			l.waitFor(t, "after")
			want := append([]string{"before"}, names(during[len(during)-tc.kept:])...)
			want = append(want, "after")
			if got := l.delivered(); !slices.Equal(got, want) {
				t.Fatalf("delivered %q, want %q (the newest %d kept)", got, want, tc.kept)
			}
		})
	}
}

// TestQueueFullByBytesReported: a subscriber that comes back to a queue
// with no room left under Options.QueueBytes for a message of
// transport.MaxMessageSize reports transport.ErrMessagesLost, as it does
// for a queue of QueueLength messages (QueueLength is 1000 here, never
// reached): with 12 messages of 512 KiB published while it was cut off
// (the broker dropped 4), and with 7 (3.5 MiB: none dropped, but the
// next could have been). With 5 (2.5 MiB) it reports nothing lost, and
// receives them all in order: reading the queue to measure it gave them
// back in place.
func TestQueueFullByBytesReported(t *testing.T) {
	url := brokerURL(t)
	for _, tc := range []struct {
		n    int
		lost bool
	}{{5, false}, {7, true}, {12, true}} {
		t.Run(fmt.Sprint(tc.n), func(t *testing.T) {
			t.Parallel()
			pub, sub, l, proxy := cutOffSubscriber(t, url, &amqpbus.Options{QueueLength: 1000, QueueBytes: testQueueBytes})
			cut(t, url, proxy, l, sub)
			during := bigMessages("during", tc.n)
			publish(t, pub, during...)
			proxy.Restore()
			err := l.next(t, true)
			if tc.lost != errors.Is(err, transport.ErrMessagesLost) {
				t.Fatalf("back up with %v, want lost %v", err, tc.lost)
			}
			if !tc.lost && err != nil {
				t.Fatalf("back up with %v, want nil", err)
			}
			publish(t, pub, "after")
			l.waitFor(t, "after")
			kept := during[max(0, tc.n-testQueueBytes/bigMessage):]
			want := append(append([]string{"before"}, names(kept)...), "after")
			if got := l.delivered(); !slices.Equal(got, want) {
				t.Fatalf("delivered %q, want %q", got, want)
			}
		})
	}
}

// A warnLog counts the warnings a Bus logs.
type warnLog struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnLog) warn(msg string, args ...any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, fmt.Sprint(append([]any{msg}, args...)...))
}

func (w *warnLog) all() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.msgs)
}

// TestOldStyleQueueKept: the broker already has the subscriber's queue as
// a version without the byte bound declared it (x-max-length and
// x-expires only), bound to the farm's exchange and holding 5 messages.
// The broker refuses to declare it again with x-max-length-bytes
// (PRECONDITION_FAILED); the Bus consumes it as it is: it comes up
// reporting nothing lost, with no failed attempt, delivers the 5 messages
// and what follows, and warns once. A reconnection finds it again, with no
// second warning and nothing lost. Once the queue is gone (deleted while
// the subscriber is cut off: a loss), the Bus declares it anew, with the
// byte bound in force.
func TestOldStyleQueueKept(t *testing.T) {
	url := brokerURL(t)
	name := farmtest.FarmName(t)
	proxy := nettest.NewProxy(t, brokerAddr(url))
	pub := open(t, url, name, nil)
	sub := open(t, viaProxy(t, url, proxy.Addr), name, &amqpbus.Options{QueueLength: 1000, QueueBytes: testQueueBytes, KeepQueue: time.Minute})
	var warns warnLog
	amqpbus.SetWarn(sub, warns.warn)

	ch := brokerChannel(t, url)
	if err := ch.ExchangeDeclare(sub.Exchange(), amqp.ExchangeFanout, false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(sub.Queue(), false, false, false, false, amqp.Table{
		"x-max-length": int64(1000),
		"x-expires":    int64(time.Minute / time.Millisecond),
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if ch, err := amqp.Dial(url); err == nil {
			defer ch.Close()
			if c, err := ch.Channel(); err == nil {
				c.QueueDelete(sub.Queue(), false, false, false)
			}
		}
	})
	if err := ch.QueueBind(sub.Queue(), "", sub.Exchange(), false, nil); err != nil {
		t.Fatal(err)
	}
	old := []string{"old-1", "old-2", "old-3", "old-4", "old-5"}
	publish(t, pub, old...)
	if n := queueMessages(t, url, sub.Queue()); n != len(old) {
		t.Fatalf("the old queue holds %d messages, want %d", n, len(old))
	}

	l, _ := subscribeLogged(t, sub)
	select {
	case s := <-l.states:
		if !s.up || s.err != nil {
			t.Fatalf("the first state reported is up=%v (%v), want up with nil", s.up, s.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the subscription reported nothing within 10s")
	}
	l.waitFor(t, old...)
	publish(t, pub, "new")
	l.waitFor(t, "new")
	if got, want := l.delivered(), append(old, "new"); !slices.Equal(got, want) {
		t.Fatalf("delivered %q, want %q", got, want)
	}
	select {
	case s := <-l.states:
		t.Fatalf("the subscription reported up=%v (%v) after it came up", s.up, s.err)
	default:
	}
	if w := warns.all(); len(w) != 1 || !strings.Contains(w[0], sub.Queue()) {
		t.Fatalf("warnings %q, want one naming the queue", w)
	}

	// Reconnecting: the old queue again, what was published meanwhile
	// kept, no second warning.
	cut(t, url, proxy, l, sub)
	publish(t, pub, "during-1", "during-2")
	proxy.Restore()
	if err := l.next(t, true); err != nil {
		t.Fatalf("back on the old queue with %v, want nil", err)
	}
	l.waitFor(t, "during-1", "during-2")
	if got, want := l.delivered(), append(old, "new", "during-1", "during-2"); !slices.Equal(got, want) {
		t.Fatalf("delivered %q, want %q", got, want)
	}
	if w := warns.all(); len(w) != 1 {
		t.Fatalf("warnings %q, want the first one only", w)
	}

	// The old queue gone, the Bus's own has the byte bound.
	cut(t, url, proxy, l, sub)
	if _, err := brokerChannel(t, url).QueueDelete(sub.Queue(), false, false, false); err != nil {
		t.Fatal(err)
	}
	proxy.Restore()
	if err := l.next(t, true); !errors.Is(err, transport.ErrMessagesLost) {
		t.Fatalf("back up after the queue was deleted with %v, want transport.ErrMessagesLost", err)
	}
	cut(t, url, proxy, l, sub)
	publish(t, pub, bigMessages("big", 12)...)
	if got, want := queueMessages(t, url, sub.Queue()), testQueueBytes/bigMessage; got != want {
		t.Fatalf("the new queue holds %d messages of 512 KiB, want %d (its 4 MiB)", got, want)
	}
	proxy.Restore()
	if err := l.next(t, true); !errors.Is(err, transport.ErrMessagesLost) {
		t.Fatalf("back up with %v, want transport.ErrMessagesLost", err)
	}
	if w := warns.all(); len(w) != 1 {
		t.Fatalf("warnings %q, want the first one only", w)
	}
}
