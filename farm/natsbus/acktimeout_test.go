package natsbus_test

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
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
	hungRequestsUnanswered(t, context.Background(), true, map[string]func(context.Context, *natsbus.Transport) error{
		"PutRecords": func(ctx context.Context, tr *natsbus.Transport) error {
			return tr.PutRecords(ctx, transport.Item{Key: "a", Value: []byte("v"), TTL: time.Hour})
		},
		"SetAdd": func(ctx context.Context, tr *natsbus.Transport) error {
			return tr.SetAdd(ctx, "set", []byte("m"), time.Now().Add(time.Hour))
		},
	})
}

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
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	hungRequestsUnanswered(t, ctx, false, map[string]func(context.Context, *natsbus.Transport) error{
		"GetRecord": func(ctx context.Context, tr *natsbus.Transport) error {
			_, err := tr.GetRecord(ctx, "k")
			return err
		},
		"PutRecords": func(ctx context.Context, tr *natsbus.Transport) error {
			return tr.PutRecords(ctx, transport.Item{Key: "a", Value: []byte("v"), TTL: time.Hour})
		},
	})
}

// hungRequestsUnanswered opens a transport through a proxy to a server of
// its own, opens the bucket first if warm, freezes the proxy, and runs
// every request at once with ctx: each must fail, before ctx ends and
// within 30 s, with an error that says the server did not answer.
func hungRequestsUnanswered(t *testing.T, ctx context.Context, warm bool, requests map[string]func(context.Context, *natsbus.Transport) error) {
	t.Helper()
	url := embedded(t)
	px := nettest.NewProxy(t, url[len("nats://"):])
	tr := open(t, "nats://"+px.Addr, farmtest.FarmName(t))
	if warm {
		if _, err := tr.GetRecord(ctx, "warm"); err != transport.ErrNotFound {
			t.Fatalf("GetRecord = %v", err)
		}
	}
	px.Freeze()
	defer px.Thaw()
	type result struct {
		name string
		err  error
	}
	res := make(chan result, len(requests))
	for name, req := range requests {
		go func() { res <- result{name, req(ctx, tr)} }()
	}
	for range requests {
		select {
		case r := <-res:
			if r.err == nil || ctx.Err() != nil {
				t.Fatalf("%s to a hung server: %v (the test's context: %v)", r.name, r.err, ctx.Err())
			}
			if !errors.Is(r.err, os.ErrDeadlineExceeded) && !errors.Is(r.err, context.DeadlineExceeded) {
				t.Errorf("%s to a hung server (bucket open before: %v) failed with %q, not as unanswered", r.name, warm, r.err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("a request to a hung server still waits after 30 s")
		}
	}
}
