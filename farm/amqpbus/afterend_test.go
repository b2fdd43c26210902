package amqpbus_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
)

// TestNoDeliveryAfterContextEnds: Subscribe delivers until its context is
// done, and not after: a message already received when the context ends
// is left for the queue (unacknowledged, it comes again), not handed to a
// node that is closing. Each round ends the context from within deliver
// while more messages wait; before the fix Subscribe's select picked a
// waiting delivery over the ended context half the time.
func TestNoDeliveryAfterContextEnds(t *testing.T) {
	b := open(t, brokerURL(t), farmtest.FarmName(t), nil)
	batch := make([][]byte, 200)
	for i := range batch {
		batch[i] = []byte("m")
	}
	for round := range 12 {
		ctx, cancel := context.WithCancel(context.Background())
		var n, late atomic.Int32
		up := make(chan struct{}, 1)
		done := make(chan struct{})
		go func() {
			defer close(done)
			b.Subscribe(ctx, func([]byte) {
				if ctx.Err() != nil {
					late.Add(1)
				}
				if n.Add(1) == 5 {
					cancel()
				}
			}, func(ok bool, _ error) {
				if ok {
					select {
					case up <- struct{}{}:
					default:
					}
				}
			})
		}()
		select {
		case <-up:
		case <-time.After(10 * time.Second):
			t.Fatal("not subscribed")
		}
		pctx, pcancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := b.Publish(pctx, batch...); err != nil {
			t.Fatal(err)
		}
		pcancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("Subscribe did not return")
		}
		if l := late.Load(); l > 0 {
			t.Fatalf("round %d: %d message(s) delivered after the context ended", round, l)
		}
	}
}
