package redisbus_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// BenchmarkStoreWrite measures the farm's commonest store writes, one at
// a time: a session record's SET (PutRecords of one item), its first
// write where peers may have it first (an Item.Late, a script), and a
// record written with its message in one round trip (PutAndPublish
// with a SET, and with the Item.Late), about a
// sealed session's size, on the shared Redis and on a private Redis
// Cluster of three masters. The records (1024 keys, written over and
// over) lapse a minute after the benchmark.
func BenchmarkStoreWrite(b *testing.B) {
	b.Run("redis", func(b *testing.B) { storeWrites(b, redistest.URL(b)) })
	b.Run("cluster", func(b *testing.B) {
		c := redistest.StartCluster(b, 3, 0, 2*time.Second)
		storeWrites(b, c.URL(""))
	})
}

func storeWrites(b *testing.B, url string) {
	tr, err := redisbus.Open(url, farmtest.FarmName(b))
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	ctx := context.Background()
	value := make([]byte, 200)
	msg := [][]byte{make([]byte, 300)}
	const keys = 1024
	names := make([]string, keys)
	for i := range names {
		names[i] = "w" + strconv.Itoa(i)
	}
	b.Run("set", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if err := tr.PutRecords(ctx, transport.Item{Key: names[i%keys], Value: value, TTL: time.Minute}); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("first", func(b *testing.B) {
		// A session's first write where the bus may bring it to peers
		// before the store has it: Item.Late, lateScript by hash.
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if err := tr.PutRecords(ctx, transport.Item{Key: names[i%keys], Value: value, TTL: time.Minute, Late: true}); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("put-and-publish", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if err := tr.PutAndPublish(ctx, []transport.Item{{Key: names[i%keys], Value: value, TTL: time.Minute}}, nil, msg); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("put-and-publish-first", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if err := tr.PutAndPublish(ctx, []transport.Item{{Key: names[i%keys], Value: value, TTL: time.Minute, Late: true}}, nil, msg); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}
