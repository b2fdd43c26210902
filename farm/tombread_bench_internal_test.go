package farm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/session"
)

// BenchmarkTombstoneHeal measures one heal's read of the farm's
// revocations (readTombstones) with transport.MaxSetMembers of them in a
// private Redis, all applied already: unchanged, and with one member
// replaced before each heal (outside the timer). redis-cpu-ms/op is the
// server's CPU for it. It uses only what the node had before the set's
// versions, so that it also runs on the code before them:
//
//	go test -run '^$' -bench BenchmarkTombstoneHeal -benchtime 10x ./farm/
func BenchmarkTombstoneHeal(b *testing.B) {
	srv := redistest.Start(b)
	var rb [6]byte
	rand.Read(rb[:])
	name := "tombheal-" + hex.EncodeToString(rb[:])
	tr, err := redisbus.Open(srv.URL(), name)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tr.Close() })
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	b.Cleanup(func() { c.Close() })
	cache, err := session.New(&session.Config{Lifetime: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cache.Close() })
	n, err := Join(context.Background(), Config{Farm: name, Cache: cache, Bus: tr, Store: tr,
		Secrets: []Secret{{ID: 1, Bytes: make([]byte, 32)}}, OpTimeout: 20 * time.Second, HealInterval: time.Hour,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { n.Close() })
	until := time.Now().Add(time.Hour)
	hdr := header{typ: valTombstone, time: time.Now(), sender: n.instance, farm: name}
	seal := func(chain uint64) []byte {
		return n.keys.seal(nil, hdr, appendRevocations(nil, []revocation{{chain: chain, until: until}}), nil)
	}
	ctx := context.Background()
	key := tr.Key(tombstoneKey)
	for i := 0; i < transport.MaxSetMembers-1; i += 1000 {
		p := c.Pipeline()
		for j := i; j < min(i+1000, transport.MaxSetMembers-1); j++ {
			p.ZAdd(ctx, key, redis.Z{Score: float64(until.UnixMilli()), Member: seal(uint64(j) + 1)})
		}
		if _, err := p.Exec(ctx); err != nil {
			b.Fatal(err)
		}
	}
	last := seal(transport.MaxSetMembers)
	if err := tr.SetAdd(ctx, tombstoneKey, last, until); err != nil {
		b.Fatal(err)
	}
	if err := n.readTombstones(ctx); err != nil {
		b.Fatal(err)
	}
	heal := func(b *testing.B, change bool) {
		cpu0, _ := redistest.ServerCPU(ctx, c)
		var excluded time.Duration
		next := uint64(transport.MaxSetMembers) + 1
		b.ResetTimer()
		for range b.N {
			if change {
				b.StopTimer()
				c0, _ := redistest.ServerCPU(ctx, c)
				c.ZRem(ctx, key, last)
				last = seal(next)
				next++
				if err := tr.SetAdd(ctx, tombstoneKey, last, until); err != nil {
					b.Fatal(err)
				}
				c1, _ := redistest.ServerCPU(ctx, c)
				excluded += c1 - c0
				b.StartTimer()
			}
			if err := n.readTombstones(ctx); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		cpu1, _ := redistest.ServerCPU(ctx, c)
		b.ReportMetric(float64(cpu1-cpu0-excluded)/float64(time.Millisecond)/float64(b.N), "redis-cpu-ms/op")
	}
	b.Run("unchanged", func(b *testing.B) { heal(b, false) })
	b.Run("changed", func(b *testing.B) { heal(b, true) })
}
