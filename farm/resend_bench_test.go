package farm

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// BenchmarkResend measures one re-send of a full ring of retirements and
// grace cuts (Node.sent, QueueSize items, half of each), the burst every
// node of a farm sends when one peer's bus gap (or write-back) asks for it,
// at most once a second: from resendHeld queuing the items again to the
// peer having received every message, through the shared Redis (bus and
// store, one transport: the store's part, the records' deletion, and the
// bus's go out in one round trip per batch). One op is one re-send.
//
// Besides ns/op it reports cpu-µs/op (the process's: the sender's work
// and the receiver's), B/op and allocs/op (the process's too),
// syscalls/op and ctxsw/op (see tlstest.Counters),
// msgs/op (bus messages the peer received: each also one store round
// trip, the messages and deletions of a batch going out together) and
// items/msg. CI compiles it without running it.
func BenchmarkResend(b *testing.B) {
	url := redistest.URL(b)
	for _, size := range []int{1024, defaultQueueSize} {
		b.Run(fmt.Sprintf("ring=%d", size), func(b *testing.B) {
			benchResend(b, url, size)
		})
	}
}

func benchResend(b *testing.B, url string, size int) {
	farm := fmt.Sprintf("bench-resend-%d-%x", size, rand.Uint64())
	secret := NewSecret(1)
	join := func(name string) *Node {
		cache, err := session.New(&session.Config{SweepInterval: -1, Lifetime: time.Hour})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { cache.Close() })
		tr, err := redisbus.Open(url, farm)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { tr.Close() })
		n, err := Join(context.Background(), Config{Farm: farm, NodeName: name, Secrets: []Secret{secret}, Cache: cache,
			Bus: tr, Store: tr, QueueSize: size, TallyInterval: -1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { n.Close() })
		return n
	}
	sender, peer := join("n1"), join("n2")
	for end := time.Now().Add(10 * time.Second); !sender.Connected() || !peer.Connected(); {
		if time.Now().After(end) {
			b.Fatal("the nodes did not subscribe")
		}
		time.Sleep(10 * time.Millisecond)
	}
	sender.FillSent(size)
	sent := func() uint64 { return sender.life.retiresSent.Load() + sender.life.cutsSent.Load() }
	got := func() uint64 { return peer.life.retiresReceived.Load() + peer.life.cutsRecv.Load() }
	var msgs uint64
	b.ReportAllocs()
	start := tlstest.Snapshot()
	b.ResetTimer()
	for range b.N {
		s0, g0, m0 := sent(), got(), peer.ctr.received.Load()
		sender.resendHeld(context.Background(), true)
		for end := time.Now().Add(30 * time.Second); sent()-s0 < uint64(size) || got()-g0 < uint64(size); {
			if time.Now().After(end) {
				b.Fatalf("sent %d, the peer got %d of %d", sent()-s0, got()-g0, size)
			}
			time.Sleep(time.Millisecond)
		}
		msgs += peer.ctr.received.Load() - m0
	}
	b.StopTimer()
	start.Report(b)
	b.ReportMetric(float64(msgs)/float64(b.N), "msgs/op")
	b.ReportMetric(float64(size)*float64(b.N)/float64(msgs), "items/msg")
}
