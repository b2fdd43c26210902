package natsbus_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
)

// BenchmarkFanout measures the floor under the farm's cost of sharing over
// NATS: what one message through core NATS costs when nothing batches it,
// as on a farm node that shares one session per handshake at moderate load.
// It has the shape of redisbus.BenchmarkFanout, so that the two compare
// side by side: three transports of one farm (three nodes) each subscribe;
// the first sends one 300-byte message (about a sealed TLS 1.3 session) per
// operation and waits until the two others have it. The transports connect
// with nats.NoEcho, as Open makes them, so the sender gets no copy of its
// own message (Redis delivers it one). No farm code runs: no sealing, no
// cache, no store write (a farm that broadcasts over NATS writes its
// records elsewhere). "publish" sends with Transport.Publish, which flushes
// (a PING and its PONG, to learn of a failed write) as the farm's publisher
// does once per batch; "noflush" publishes on the connection and leaves
// nats.go's flusher to write, to show what the flush costs.
//
// The benchmark starts its own nats-server (the machine's binary, on a free
// loopback port) so that nothing else uses it. cpu-µs/op is this process's
// CPU (the sender and three receivers), nats-cpu-µs/op the server's (from
// /proc/<pid>/stat, in 10 ms ticks: run enough operations), syscalls/op and
// ctxsw/op the process's read and write system calls and voluntary context
// switches.
func BenchmarkFanout(b *testing.B) {
	srv := startNATS(b)
	url := srv.URL("")
	for _, kind := range []string{"publish", "noflush"} {
		b.Run(kind, func(b *testing.B) {
			name := farmtest.FarmName(b)
			const nodes, peers = 3, 2
			var got atomic.Int64
			arrived := make(chan struct{}, 1)
			var buses []*natsbus.Transport
			for range nodes {
				buses = append(buses, open(b, url, name))
			}
			for i, bus := range buses {
				farmtest.Subscribed(b, bus, func([]byte) {
					if i == 0 {
						b.Error("the sender received its own message (no NoEcho?)")
						return
					}
					if got.Add(1)%peers == 0 {
						arrived <- struct{}{}
					}
				})
			}
			sender := buses[0]
			ctx := context.Background()
			msg := make([]byte, 300)
			wait := func() {
				select {
				case <-arrived:
				case <-time.After(5 * time.Second):
					b.Fatalf("a message did not reach both peers within 5s")
				}
			}
			if err := sender.Publish(ctx, msg); err != nil {
				b.Fatal(err)
			}
			wait()
			natsStart := srv.CPU()
			start := tlstest.Snapshot()
			send := func() error {
				if kind == "publish" {
					return sender.Publish(ctx, msg)
				}
				return sender.Conn().Publish(sender.Subject(), msg)
			}
			for b.Loop() {
				if err := send(); err != nil {
					b.Fatal(err)
				}
				wait()
			}
			start.Report(b)
			b.ReportMetric(float64((srv.CPU()-natsStart).Microseconds())/float64(b.N), "nats-cpu-µs/op")
		})
	}
}
