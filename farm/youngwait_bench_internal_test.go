package farm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"runtime"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
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
	srv := redistest.Start(b)
	var rb [6]byte
	rand.Read(rb[:])
	name := "youngwait-" + hex.EncodeToString(rb[:])
	tr, err := redisbus.Open(srv.URL(), name)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tr.Close() })
	cache, err := session.New(&session.Config{Lifetime: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cache.Close() })
	n, err := Join(context.Background(), Config{Farm: name, Cache: cache, Bus: tr, Store: tr, WriteThrough: true,
		LookupTimeout: time.Second, WriteThroughTimeout: time.Minute,
		Secrets: []Secret{{ID: 1, Bytes: make([]byte, 32)}}, HealInterval: time.Hour,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { n.Close() })
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
			id := cache.NewID()
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
			id := cache.NewID()
			ids <- id
			load(b, id)
		}
	})
}
