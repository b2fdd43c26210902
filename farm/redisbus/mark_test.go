package redisbus_test

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// TestDeliveredThroughNeverPassesUndelivered publishes a stream of
// messages to a subscriber that takes 20 ms over each, so that a backlog
// builds up while the subscription stays up. At the start of each
// delivery, DeliveredThrough must not be later than the time Redis
// acknowledged that message's publish: the message was taken before then,
// and has not been delivered. A mark taken when a marking ping is answered
// rather than when it was sent, or one that does not wait for the answer,
// passes the backlog. Once the backlog is gone, the mark must pass the
// last acknowledgement; it is zero before the subscription is up and once
// Subscribe has returned.
func TestDeliveredThroughNeverPassesUndelivered(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	name := farmtest.FarmName(t)
	sub, err := redisbus.Open(url, name)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	pub, err := redisbus.Open(url, name)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	if !sub.DeliveredThrough().IsZero() {
		t.Fatal("DeliveredThrough is set before any subscription")
	}

	const messages = 60
	var mu sync.Mutex
	acked := make([]time.Time, messages) // when Redis acknowledged each publish
	var violations, delivered int
	var first string
	ctx, cancel := context.WithCancel(context.Background())
	upc := make(chan struct{})
	var once sync.Once
	done := make(chan struct{})
	go func() {
		defer close(done)
		sub.Subscribe(ctx, func(msg []byte) {
			k, err := strconv.Atoi(string(msg))
			if err != nil || k < 0 || k >= messages {
				return
			}
			mark := sub.DeliveredThrough()
			mu.Lock()
			if a := acked[k]; !a.IsZero() && mark.After(a) {
				violations++
				if first == "" {
					first = "message " + strconv.Itoa(k) + ": marked " + mark.Sub(a).String() + " past its acknowledgement"
				}
			}
			delivered++
			mu.Unlock()
			time.Sleep(20 * time.Millisecond)
		}, func(up bool, _ error) {
			if up {
				once.Do(func() { close(upc) })
			}
		})
	}()
	select {
	case <-upc:
	case <-time.After(10 * time.Second):
		t.Fatal("the subscription did not come up")
	}
	farmtest.Eventually(t, 5*time.Second, "the delivery was marked", func() bool {
		return time.Since(sub.DeliveredThrough()) < time.Second
	})
	for k := range messages {
		// Stamped before the publish returns: the message is in the
		// slice before the subscriber can be handed it.
		mu.Lock()
		acked[k] = time.Now().Add(time.Hour) // not yet known: no bound
		mu.Unlock()
		if err := pub.Publish(context.Background(), []byte(strconv.Itoa(k))); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		acked[k] = time.Now()
		mu.Unlock()
		time.Sleep(2 * time.Millisecond)
	}
	last := acked[messages-1]
	farmtest.Eventually(t, 10*time.Second, "every message was delivered and marked", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return delivered == messages && sub.DeliveredThrough().After(last)
	})
	mu.Lock()
	if violations > 0 {
		t.Errorf("%d of %d deliveries began after the mark had passed them (%s)", violations, messages, first)
	}
	mu.Unlock()
	cancel()
	<-done
	if !sub.DeliveredThrough().IsZero() {
		t.Error("DeliveredThrough is still set after Subscribe returned")
	}
}

// TestDeliveredThroughZeroWhileDown: a subscription whose Redis is gone
// marks nothing: the mark goes back to zero when the loss is reported,
// and moves again only once the subscription is back.
func TestDeliveredThroughZeroWhileDown(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	tr, err := redisbus.Open("redis://"+srv.Addr(), farmtest.FarmName(t))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var up bool
	var markWhileDown time.Time
	go tr.Subscribe(ctx, func([]byte) {}, func(u bool, _ error) {
		mu.Lock()
		up = u
		mu.Unlock()
	})
	fresh := func() bool { return time.Since(tr.DeliveredThrough()) < 2*redisbus.MarkInterval+time.Second }
	farmtest.Eventually(t, 10*time.Second, "the delivery was marked", fresh)
	srv.Kill()
	farmtest.Eventually(t, 10*time.Second, "the loss was reported", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return !up
	})
	for range 5 {
		mu.Lock()
		if !up && !tr.DeliveredThrough().IsZero() {
			markWhileDown = tr.DeliveredThrough()
		}
		mu.Unlock()
		time.Sleep(redisbus.MarkInterval)
	}
	if !markWhileDown.IsZero() {
		t.Fatalf("DeliveredThrough was %v ago while the subscription was down", time.Since(markWhileDown))
	}
	srv.Restart()
	farmtest.Eventually(t, 15*time.Second, "the delivery was marked again", fresh)
}
