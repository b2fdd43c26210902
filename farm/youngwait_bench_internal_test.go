package farm

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// BenchmarkYoungWait measures a broadcast node's write-through wait for a
// young session the bus brings (loadYoung, on a private Redis): "recent",
// the session arrived just before the wait began; "waiter", it arrives
// while the handshake waits (another goroutine delivers it once the waiter
// is registered, so the figure includes that goroutine's hand-off).
//
//	go test -run '^$' -bench BenchmarkYoungWait ./farm/
func BenchmarkYoungWait(b *testing.B) {
	n := benchNode(b, "youngwait", func(c *Config) {
		c.WriteThrough, c.LookupTimeout, c.WriteThroughTimeout = true, time.Second, time.Minute
	})
	for !n.connected.Load() {
		time.Sleep(time.Millisecond)
	}
	rec := session.Record{State: []byte("state"), ServerName: "localhost", Expires: time.Now().Add(time.Hour)}
	load := func(b *testing.B, id session.ID) {
		ctx, cancel := context.WithTimeout(context.Background(), n.cfg.LookupTimeout)
		until, ok := n.youngUntil(id, n.cfg.Now())
		if !ok {
			b.Fatal("a new ID is not young")
		}
		got, err := n.loadYoung(ctx, id, until)
		cancel()
		if got == nil || err != nil {
			b.Fatalf("the wait did not get its session: %v", err)
		}
	}
	b.Run("recent", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			id := n.cfg.Cache.NewID()
			n.arr.arrived(arrival{id: id, rec: rec, ok: true})
			load(b, id)
		}
	})
	b.Run("waiter", func(b *testing.B) {
		b.ReportAllocs()
		ids := make(chan session.ID)
		defer close(ids)
		go func() {
			for id := range ids {
				for n.arr.nwait.Load() == 0 {
					runtime.Gosched()
				}
				n.arr.arrived(arrival{id: id, rec: rec, ok: true})
			}
		}()
		for b.Loop() {
			id := n.cfg.Cache.NewID()
			ids <- id
			load(b, id)
		}
	})
}
