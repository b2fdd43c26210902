package natsbus_test

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
)

// TestOpenTimeoutIsUnanswered: a request that must first open the bucket
// (its first use, or after the bucket was forgotten) on a server that has
// stopped answering fails, once the open's own bound has passed, with an
// error that says the server did not answer, not with its text alone: the
// farm's hit gate and its count of unanswered writes (storeSilent) take an
// error that loses errors.Is for the store's answer, a refusal, and hold
// a node cut off from its store to reads that cannot come.
func TestOpenTimeoutIsUnanswered(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the bucket open's 5 s bound")
	}
	url := embedded(t)
	px := nettest.NewProxy(t, url[len("nats://"):])
	tr := open(t, "nats://"+px.Addr, farmtest.FarmName(t))
	px.Freeze()
	defer px.Thaw()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res := make(chan error, 2)
	go func() {
		_, err := tr.GetRecord(ctx, "k")
		res <- err
	}()
	go func() { res <- tr.PutRecords(ctx, transport.Item{Key: "a", Value: []byte("v"), TTL: time.Hour}) }()
	for range 2 {
		select {
		case err := <-res:
			if err == nil || ctx.Err() != nil {
				t.Fatalf("a request to a hung server: %v (the test's context: %v)", err, ctx.Err())
			}
			if !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("a request to a hung server, whose bucket was not open, failed with %q, not as unanswered", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("a request to a hung server still waits after 30 s")
		}
	}
}
