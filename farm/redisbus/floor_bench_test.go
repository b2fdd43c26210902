package redisbus_test

import (
	"context"
	"fmt"
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
// until the subscriptions have it: with echo=off (per-sender channels, the
// default) the two peers', with echo=on (Echo: the farm's shared channel
// only, as before per-sender channels) all three, the sender's own
// included. No farm code runs: no sealing, no cache. put+publish writes a
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
	for _, echo := range []bool{true, false} {
		for _, kind := range []string{"publish", "put+publish"} {
			b.Run(fmt.Sprintf("echo=%s/%s", map[bool]string{true: "on", false: "off"}[echo], kind), func(b *testing.B) {
				fanout(b, url, echo, kind)
			})
		}
	}
}

func fanout(b *testing.B, url string, echo bool, kind string) {
	name := redistest.Farm(b)
	const nodes = 3
	per := nodes - 1 // deliveries per message: the peers
	if echo {
		per = nodes // and the sender's own copy
	}
	var got, own atomic.Int64
	arrived := make(chan struct{}, 1)
	var buses []*redisbus.Transport
	for range nodes {
		tr := open(b, url, name)
		tr.Echo = echo
		buses = append(buses, tr)
	}
	for i, bus := range buses {
		farmtest.Subscribed(b, bus, func([]byte) {
			if i == 0 {
				own.Add(1)
			}
			if got.Add(1)%int64(per) == 0 {
				arrived <- struct{}{}
			}
		})
	}
	for _, bus := range buses {
		deadline := time.Now().Add(5 * time.Second)
		for bus.Shared() != echo { // the transports have counted each other
			if time.Now().After(deadline) {
				b.Fatal("the transports did not settle on their channels")
			}
			time.Sleep(time.Millisecond)
		}
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
			b.Fatalf("a message did not reach %d subscriptions within 5s", per)
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
	if !echo && own.Load() != 0 {
		b.Fatalf("the sender received %d of its own messages", own.Load())
	}
}

func mustParseURL(b *testing.B, url string) *redis.Options {
	o, err := redis.ParseURL(url)
	if err != nil {
		b.Fatal(err)
	}
	return o
}
