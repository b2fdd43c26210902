package natsbus_test

import (
	"context"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
)

// TestCloseEndsWritesInFlight: Close ends the writes waiting for the
// server's acknowledgments, as it ends reads. A PutRecords, DeleteRecords
// or SetAdd whose context has no deadline, on a server that has hung,
// used to wait 10 s after Close (nats.go's asynchronous publish timeout),
// while a GetRecord ended at once.
func TestCloseEndsWritesInFlight(t *testing.T) {
	url := embedded(t)
	px := nettest.NewProxy(t, url[len("nats://"):])
	tr := open(t, "nats://"+px.Addr, farmtest.FarmName(t))
	ctx := context.Background()
	if _, err := tr.GetRecord(ctx, "warm"); err != transport.ErrNotFound {
		t.Fatalf("GetRecord = %v", err)
	}
	px.Freeze()
	type result struct {
		op  string
		err error
	}
	res := make(chan result, 4)
	go func() {
		res <- result{"PutRecords", tr.PutRecords(ctx, transport.Item{Key: "a", Value: []byte("v"), TTL: time.Hour})}
	}()
	go func() {
		res <- result{"PutRecords NoLonger", tr.PutRecords(ctx, transport.Item{Key: "b", Value: []byte("v"), TTL: time.Hour, NoLonger: true})}
	}()
	go func() { res <- result{"DeleteRecords", tr.DeleteRecords(ctx, "a")} }()
	go func() { res <- result{"SetAdd", tr.SetAdd(ctx, "set", []byte("m"), time.Now().Add(time.Hour))} }()
	time.Sleep(200 * time.Millisecond)
	closed := time.Now()
	tr.Close()
	for range 4 {
		select {
		case r := <-res:
			if r.err == nil {
				t.Errorf("%s on a hung server succeeded", r.op)
			}
			t.Logf("%s ended %v after Close: %v", r.op, time.Since(closed).Round(time.Millisecond), r.err)
		case <-time.After(2 * time.Second):
			t.Fatal("a write still waits 2 s after Close")
		}
	}
}
