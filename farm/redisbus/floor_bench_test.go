package redisbus_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
)

// BenchmarkFanout measures the floor under the farm's cost of sharing: what
// one message through Redis pub/sub costs when nothing batches it, as on a
// farm node that shares one session per handshake at moderate load. Three
// transports of one farm (three nodes) each subscribe; the first sends one
// 300-byte message (about a sealed TLS 1.3 session) per operation and waits
// until all three subscriptions, its own included as Redis delivers it,
// have it. No farm code runs: no sealing, no cache. put+publish writes a
// record in the same pipeline, as the farm's publisher does.
//
// cpu-µs/op is this process's CPU (the sender and three receivers),
// redis-cpu-µs/op the Redis server's (INFO cpu: it includes whatever else
// used that server meanwhile, so measure on a quiet machine), syscalls/op
// and ctxsw/op the process's read and write system calls and voluntary
// context switches. Compare cpu-µs/op + redis-cpu-µs/op with a TLS
// handshake's CPU (session.BenchmarkHandshake) to see how much of a
// handshake one unbatched message costs on the machine at hand.
func BenchmarkFanout(b *testing.B) {
	url := redistest.URL(b)
	for _, kind := range []string{"publish", "put+publish"} {
		b.Run(kind, func(b *testing.B) {
			name := redistest.Farm(b)
			var got atomic.Int64
			arrived := make(chan struct{}, 1)
			const nodes = 3
			var buses []*redisbus.Transport
			for range nodes {
				buses = append(buses, open(b, url, name))
			}
			for _, bus := range buses {
				farmtest.Subscribed(b, bus, func([]byte) {
					if got.Add(1)%nodes == 0 {
						arrived <- struct{}{}
					}
				})
			}
			sender := buses[0]
			ctx := context.Background()
			msg := make([]byte, 300)
			item := transport.Item{Key: "floor", Value: msg, TTL: time.Minute}
			send := func() error {
				if kind == "publish" {
					return sender.Publish(ctx, msg)
				}
				return sender.PutAndPublish(ctx, []transport.Item{item}, nil, [][]byte{msg})
			}
			wait := func() {
				select {
				case <-arrived:
				case <-time.After(5 * time.Second):
					b.Fatalf("a message did not reach all %d subscriptions within 5s", nodes)
				}
			}
			if err := send(); err != nil { // connect the sender's pool
				b.Fatal(err)
			}
			wait()
			rc := redis.NewClient(mustParseURL(b, url))
			defer rc.Close()
			redisStart, err := redistest.ServerCPU(ctx, rc)
			if err != nil {
				b.Fatal(err)
			}
			start := tlstest.Snapshot()
			for b.Loop() {
				if err := send(); err != nil {
					b.Fatal(err)
				}
				wait()
			}
			start.Report(b)
			redisEnd, err := redistest.ServerCPU(ctx, rc)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64((redisEnd-redisStart).Microseconds())/float64(b.N), "redis-cpu-µs/op")
		})
	}
}

func mustParseURL(b *testing.B, url string) *redis.Options {
	o, err := redis.ParseURL(url)
	if err != nil {
		b.Fatal(err)
	}
	return o
}
