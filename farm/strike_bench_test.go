package farm_test

import (
	"context"
	"encoding/binary"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// BenchmarkStrike measures Node.Strike against the shared Redis: one
// fresh identity a call, the 0-RTT anti-replay decision's cost.
func BenchmarkStrike(b *testing.B) {
	url, farmName := redistest.URL(b), redistest.Farm(b)
	_, node := benchNode(b, url, farmName, farm.NewSecret(1), nil)
	var seq atomic.Uint64
	strike := func() {
		var id [16]byte
		binary.BigEndian.PutUint64(id[:], seq.Add(1))
		if ok, err := node.Strike(context.Background(), id[:], issuedLater, time.Minute); !ok || err != nil {
			b.Fatalf("strike: %v, %v", ok, err)
		}
	}
	// ConsumeToken is what a strike was before it checked the register
	// (SET NX PX): the baseline, measured under the same load.
	consume := func() {
		var id [16]byte
		binary.BigEndian.PutUint64(id[:], seq.Add(1))
		if ok, err := node.ConsumeToken(context.Background(), id[:], time.Minute); !ok || err != nil {
			b.Fatalf("consume: %v, %v", ok, err)
		}
	}
	b.Run("setnx-serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			consume()
		}
	})
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			strike()
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				strike()
			}
		})
	})
}

// BenchmarkStrikeServerCPU measures the Redis server's CPU time a strike
// costs (server-ns/op), on a private redis-server that nothing else uses:
// the strike's Lua script against the SET NX PX it replaced.
func BenchmarkStrikeServerCPU(b *testing.B) {
	srv := redistest.Start(b)
	_, node := benchNode(b, srv.URL(), redistest.Farm(b), farm.NewSecret(1), nil)
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rc.Close()
	var seq atomic.Uint64
	for _, bc := range []struct {
		name string
		op   func(id []byte) (bool, error)
	}{
		{"setnx", func(id []byte) (bool, error) { return node.ConsumeToken(context.Background(), id, time.Minute) }},
		{"strike", func(id []byte) (bool, error) { return node.Strike(context.Background(), id, issuedLater, time.Minute) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			before, err := redistest.ServerCPU(context.Background(), rc)
			if err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				var id [16]byte
				binary.BigEndian.PutUint64(id[:], seq.Add(1))
				if ok, err := bc.op(id[:]); !ok || err != nil {
					b.Fatalf("%v, %v", ok, err)
				}
			}
			after, err := redistest.ServerCPU(context.Background(), rc)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(after-before)/float64(b.N), "server-ns/op")
		})
	}
}
