package amqpbus_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/tlsfarm/tlsfarm/farm/amqpbus"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
)

// viaProxy returns rawURL with its host and port replaced by addr.
func viaProxy(t *testing.T, rawURL, addr string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = addr
	return u.String()
}

// A stateLog records what a subscription delivers and reports.
type stateLog struct {
	mu     sync.Mutex
	msgs   []string
	states chan stateReport
}

type stateReport struct {
	up  bool
	err error
}

func subscribeLogged(t *testing.T, b *amqpbus.Bus) (*stateLog, context.CancelFunc) {
	l := &stateLog{states: make(chan stateReport, 100)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.Subscribe(ctx, func(m []byte) {
			l.mu.Lock()
			l.msgs = append(l.msgs, string(m))
			l.mu.Unlock()
		}, func(up bool, err error) { l.states <- stateReport{up, err} })
	}()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return l, stop
}

// next returns the next state reported with up equal to want, skipping
// others, within 10s.
func (l *stateLog) next(t *testing.T, want bool) error {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case s := <-l.states:
			if s.up == want {
				return s.err
			}
		case <-timeout:
			t.Fatalf("the subscription did not report up=%v within 10s", want)
		}
	}
}

// waitFor waits until every message of want was delivered, and returns
// what was delivered, each message once, in the order first delivered.
func (l *stateLog) waitFor(t *testing.T, want ...string) []string {
	t.Helper()
	var got []string
	farmtest.Eventually(t, 10*time.Second, fmt.Sprintf("%d messages delivered", len(want)), func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		got = got[:0]
		for _, m := range l.msgs {
			if !slices.Contains(got, m) { // one handled but not acknowledged may come twice
				got = append(got, m)
			}
		}
		for _, m := range want {
			if !slices.Contains(got, m) {
				return false
			}
		}
		return true
	})
	return got
}

func (l *stateLog) has(m string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Contains(l.msgs, m)
}

// brokerChannel opens a channel on a connection of the test's own.
func brokerChannel(t *testing.T, url string) *amqp.Channel {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// publishRaw publishes body to exchange from a connection of the test's
// own, bypassing the Bus (as someone without the farm secret would), and
// returns once the broker has confirmed it, and so has put it in every
// queue bound to exchange: a publish left unconfirmed may be routed after
// what is published next on another connection.
func publishRaw(t *testing.T, url, exchange string, body []byte) {
	t.Helper()
	ch := brokerChannel(t, url)
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	c, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), exchange, "", false, false, amqp.Publishing{Body: body})
	if err != nil {
		t.Fatal(err)
	}
	if !c.Wait() {
		t.Fatal("the broker did not take the message (basic.nack)")
	}
}

func publish(t *testing.T, b *amqpbus.Bus, msgs ...string) {
	t.Helper()
	var bs [][]byte
	for _, m := range msgs {
		bs = append(bs, []byte(m))
	}
	if err := b.Publish(context.Background(), bs...); err != nil {
		t.Fatal(err)
	}
}

// TestQueueKeptAcrossOutage: a subscriber whose connection is cut (by a
// proxy between it and the broker) finds, once it reconnects, the
// messages published meanwhile in its queue, in order, and reports that
// nothing was lost. When the queue was deleted meanwhile, expired, or
// overflowed, it reports transport.ErrMessagesLost instead.
func TestQueueKeptAcrossOutage(t *testing.T) {
	url := brokerURL(t)
	for _, tc := range []struct {
		name      string
		opts      amqpbus.Options
		meanwhile func(t *testing.T, sub *amqpbus.Bus) // while cut off, after the messages are published
		lost      bool
	}{
		{name: "kept"},
		{name: "deleted", lost: true, meanwhile: func(t *testing.T, sub *amqpbus.Bus) {
			if _, err := brokerChannel(t, url).QueueDelete(sub.Queue(), false, false, false); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "expired", lost: true, opts: amqpbus.Options{KeepQueue: 200 * time.Millisecond}, meanwhile: func(t *testing.T, sub *amqpbus.Bus) {
			// A declare, passive too, counts as a use of the queue and
			// restarts its expiry: look less often than it expires.
			for i := 0; ; i++ {
				time.Sleep(400 * time.Millisecond)
				_, err := brokerChannel(t, url).QueueDeclarePassive(sub.Queue(), false, false, false, false, nil)
				if err != nil {
					break
				}
				if i == 20 {
					t.Fatal("the broker did not delete the queue within 8s")
				}
			}
		}},
		{name: "overflowed", lost: true, opts: amqpbus.Options{QueueLength: 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			name := farmtest.FarmName(t)
			proxy := nettest.NewProxy(t, brokerAddr(url))
			pub := open(t, url, name, nil)
			opts := tc.opts
			sub := open(t, viaProxy(t, url, proxy.Addr), name, &opts)
			l, _ := subscribeLogged(t, sub)
			if err := l.next(t, true); err != nil {
				t.Fatalf("first subscription reported %v", err)
			}
			publish(t, pub, "before")
			l.waitFor(t, "before")

			proxy.Cut()
			if err := l.next(t, false); err == nil {
				t.Fatal("the subscription reported down with no error")
			}
			during := []string{"during-1", "during-2", "during-3", "during-4"}
			publish(t, pub, during...)
			if tc.meanwhile != nil {
				tc.meanwhile(t, sub)
			}
			proxy.Restore()
			err := l.next(t, true)
			if tc.lost {
				if !errors.Is(err, transport.ErrMessagesLost) {
					t.Fatalf("back up with %v, want transport.ErrMessagesLost", err)
				}
			} else if err != nil {
				t.Fatalf("back up with %v, want nil (nothing lost)", err)
			}
			publish(t, pub, "after")
			got := l.waitFor(t, "after")
			if tc.lost {
				if tc.name != "overflowed" && l.has("during-1") {
					t.Fatal("a message published into the lost queue was delivered")
				}
				return
			}
			if want := append(append([]string{"before"}, during...), "after"); !slices.Equal(got, want) {
				t.Fatalf("delivered %q, want %q", got, want)
			}
		})
	}
}

// TestCloseDeletesQueue: the queue outlives the subscriber's connection,
// but not Close.
func TestCloseDeletesQueue(t *testing.T) {
	url := brokerURL(t)
	b := open(t, url, farmtest.FarmName(t), nil)
	l, stop := subscribeLogged(t, b)
	if err := l.next(t, true); err != nil {
		t.Fatal(err)
	}
	stop()
	ch := brokerChannel(t, url)
	if _, err := ch.QueueDeclarePassive(b.Queue(), false, false, false, false, nil); err != nil {
		t.Fatalf("the queue is gone once the subscription ended: %v", err)
	}
	start := time.Now()
	b.Close()
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Close took %v", d)
	}
	_, err := ch.QueueDeclarePassive(b.Queue(), false, false, false, false, nil)
	var ae *amqp.Error
	if !errors.As(err, &ae) || ae.Code != amqp.NotFound {
		t.Fatalf("after Close, the queue: %v, want not found", err)
	}
}
