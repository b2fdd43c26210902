package farmtest

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// NoDeliveryAfterContextEnds checks that sub's Subscribe delivers until its
// context is done, and not after: a message already received when the
// context ends is not handed to a node that is closing. Each of twelve
// rounds ends the context from within deliver while pub's 200 messages
// wait. pub and sub may be one Bus where it hears its own messages.
func NoDeliveryAfterContextEnds(t *testing.T, pub, sub transport.Bus) {
	t.Helper()
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
			sub.Subscribe(ctx, func([]byte) {
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
			cancel()
			t.Fatal("not subscribed")
		}
		pctx, pcancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := pub.Publish(pctx, batch...)
		pcancel()
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cancel()
			t.Fatal("Subscribe did not return")
		}
		if l := late.Load(); l > 0 {
			t.Fatalf("round %d: %d message(s) delivered after the context ended", round, l)
		}
	}
}
