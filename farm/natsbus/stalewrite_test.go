package natsbus_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
)

// TestFailedWriteNotAppliedAfterReconnect: a batch of records whose
// connection is lost while it is being written fails, and what of it had
// not reached the server stays unwritten. nats.go used to keep it in its
// reconnect buffer and send it once the client was back, so that records
// a peer deleted after the failure (a revocation, a retirement) came back
// from a write their writer had given up on.
func TestFailedWriteNotAppliedAfterReconnect(t *testing.T) {
	t.Parallel()
	url := embedded(t)
	px := nettest.NewProxy(t, url[len("nats://"):])
	name := farmtest.FarmName(t)
	writer := open(t, "nats://"+px.Addr, name)
	peer := open(t, url, name)
	ctx := context.Background()
	if _, err := peer.GetRecord(ctx, "warm"); err != transport.ErrNotFound {
		t.Fatalf("GetRecord on an empty store = %v", err)
	}
	if _, err := writer.GetRecord(ctx, "warm"); err != transport.ErrNotFound {
		t.Fatalf("GetRecord through the proxy = %v", err)
	}
	value := make([]byte, 300)
	failed := 0
	for attempt := 0; attempt < 12 && failed < 4; attempt++ {
		items := make([]transport.Item, 3000)
		keys := make([]string, len(items))
		for i := range items {
			keys[i] = fmt.Sprintf("s:%d-%d", attempt, i)
			items[i] = transport.Item{Key: keys[i], Value: value, TTL: time.Hour}
		}
		wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		errc := make(chan error, 1)
		go func() { errc <- writer.PutRecords(wctx, items...) }()
		time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
		before := writer.Conn().Stats().Reconnects
		px.Cut()
		err := <-errc
		cancel()
		if err == nil {
			px.Restore()
			waitReconnect(t, writer, before)
			continue
		}
		failed++
		// The writer gave up on the batch; a peer deletes every key of it
		// (as a revocation would), and only then is the writer back.
		if err := peer.DeleteRecords(ctx, keys...); err != nil {
			t.Fatal(err)
		}
		px.Restore()
		waitReconnect(t, writer, before)
		back := 0
		for _, k := range keys {
			if _, err := peer.GetRecord(ctx, k); err == nil {
				back++
			} else if err != transport.ErrNotFound {
				t.Fatal(err)
			}
		}
		if back > 0 {
			t.Fatalf("attempt %d: %d of %d records of a failed write (%v) were written after a peer deleted them, when the writer reconnected", attempt, back, len(keys), err)
		}
	}
	if failed == 0 {
		t.Skip("no write was cut short")
	}
	t.Logf("%d writes cut short, none applied late", failed)
}

// waitReconnect waits until tr's client has reconnected since it had made
// before reconnects, and the server has answered a ping since.
func waitReconnect(t *testing.T, tr *natsbus.Transport, before uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for tr.Conn().Stats().Reconnects == before || !tr.Conn().IsConnected() {
		if time.Now().After(deadline) {
			t.Fatal("client did not reconnect")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := tr.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
}
