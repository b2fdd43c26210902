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

// TestAckTimeoutIsUnanswered: a write whose acknowledgement never comes
// (the server hung, the caller's context without a deadline) fails after
// the client's own bound with an error that says the server did not
// answer (os.ErrDeadlineExceeded), as a context's deadline does, not as a
// refusal: the farm's hit gate counts a node cut off from its store only
// when the store gives no answer. Before, the error was flattened to its
// text, which the gate took for the store's answer.
func TestAckTimeoutIsUnanswered(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the client's 10 s acknowledgement bound")
	}
	url := embedded(t)
	px := nettest.NewProxy(t, url[len("nats://"):])
	tr := open(t, "nats://"+px.Addr, farmtest.FarmName(t))
	ctx := context.Background()
	if _, err := tr.GetRecord(ctx, "warm"); err != transport.ErrNotFound {
		t.Fatalf("GetRecord = %v", err)
	}
	px.Freeze()
	res := make(chan error, 2)
	go func() { res <- tr.PutRecords(ctx, transport.Item{Key: "a", Value: []byte("v"), TTL: time.Hour}) }()
	go func() { res <- tr.SetAdd(ctx, "set", []byte("m"), time.Now().Add(time.Hour)) }()
	for range 2 {
		select {
		case err := <-res:
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("a write to a hung server failed with %v, not as unanswered", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("a write to a hung server still waits after 30 s")
		}
	}
}
