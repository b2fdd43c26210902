package natsbus_test

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/natstest"
)

// BenchmarkPublish publishes batches of 256 messages of 300 bytes (the
// farm's default batch, about the size of a sealed TLS 1.3 session) with
// one subscriber receiving them.
func BenchmarkPublish(b *testing.B) {
	url := sharedURL(b)
	name := farmtest.FarmName(b)
	farmtest.BenchmarkPublish(b, open(b, url, name), open(b, url, name))
}

// BenchmarkPropagation measures the time from Publish on one bus to
// delivery on another, one message at a time, and reports its p50 and p99.
func BenchmarkPropagation(b *testing.B) {
	url := sharedURL(b)
	name := farmtest.FarmName(b)
	farmtest.BenchmarkPropagation(b, open(b, url, name), open(b, url, name))
}

// BenchmarkGet measures a store lookup of a present key: what a handshake
// waits for on a local cache miss.
func BenchmarkGet(b *testing.B) { benchGet(b, context.Background()) }

// BenchmarkGetPrimary is BenchmarkGet for a read the farm marks
// transport.PrimaryRead (a gated hit's, a revocation's): a get that the
// leader of the bucket's stream answers, not a direct get.
func BenchmarkGetPrimary(b *testing.B) { benchGet(b, transport.PrimaryRead(context.Background())) }

// BenchmarkGetCluster is BenchmarkGet ("direct") and BenchmarkGetPrimary
// ("primary") on a three-server cluster in the benchmark's process, the
// client on a server that follows the leader of the bucket's stream: any
// replica answers a direct get, the leader a read marked
// transport.PrimaryRead, one route away.
func BenchmarkGetCluster(b *testing.B) {
	c := natstest.StartCluster(b, 3)
	name := farmtest.FarmName(b)
	w := openURL(b, c.Servers[0].ClientURL(), name)
	ctx := context.Background()
	if err := w.PutRecords(ctx, transport.Item{Key: "s:0001", Value: make([]byte, 300), TTL: time.Minute}); err != nil {
		b.Fatal(err)
	}
	tr := openURL(b, followerURL(b, c, w.Bucket()), name)
	for _, bc := range []struct {
		name string
		ctx  context.Context
	}{{"direct", ctx}, {"primary", transport.PrimaryRead(ctx)}} {
		b.Run(bc.name, func(b *testing.B) {
			var lat []time.Duration
			b.ReportAllocs()
			for b.Loop() {
				start := time.Now()
				if _, err := tr.GetRecord(bc.ctx, "s:0001"); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			farmtest.ReportPercentiles(b, lat)
		})
	}
}

// benchGet is BenchmarkGet with its reads under ctx.
func benchGet(b *testing.B, ctx context.Context) {
	tr := open(b, sharedURL(b), farmtest.FarmName(b))
	if err := tr.PutRecords(ctx, transport.Item{Key: "s:0001", Value: make([]byte, 300), TTL: time.Minute}); err != nil {
		b.Fatal(err)
	}
	var lat []time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		if _, err := tr.GetRecord(ctx, "s:0001"); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	farmtest.ReportPercentiles(b, lat)
}

// BenchmarkPutRecords writes batches of 256 sessions of 300 bytes, as the
// farm's publisher does in broadcast and store-only modes: plain writes
// (new sessions), and writes over present records marked IfPresent (grace
// cuts), one batch of each kind, and one of one cut alone. The "cut" ones
// are grace cuts as the farm writes them: each shorter than the record it
// finds, so each is written, and with a Life (see transport.Item.Life).
func BenchmarkPutRecords(b *testing.B) {
	for _, c := range []struct {
		name           string
		n              int
		ifPresent, cut bool
	}{{"plain/256", 256, false, false}, {"ifpresent/256", 256, true, false}, {"plain/1", 1, false, false}, {"ifpresent/1", 1, true, false},
		{"cut/256", 256, true, true}, {"cut/1", 1, true, true}} {
		b.Run(c.name, func(b *testing.B) {
			tr := open(b, sharedURL(b), farmtest.FarmName(b))
			ctx := context.Background()
			items := make([]transport.Item, c.n)
			for i := range items {
				items[i] = transport.Item{Key: fmt.Sprintf("s:%04x", i), Value: make([]byte, 300), TTL: time.Minute}
				if c.cut {
					items[i].TTL = 2 * time.Hour
				}
			}
			if err := tr.PutRecords(ctx, items...); err != nil {
				b.Fatal(err)
			}
			for i := range items {
				items[i].IfPresent = c.ifPresent
				if c.cut {
					items[i].Life = 2 * time.Hour
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			round := 0
			for b.Loop() {
				if c.cut {
					round++
					for i := range items {
						// Each round's cut ends 100 ms sooner than
						// the last: shorter than what it finds.
						items[i].TTL = time.Hour - time.Duration(round)*100*time.Millisecond
					}
				}
				if err := tr.PutRecords(ctx, items...); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*len(items))/b.Elapsed().Seconds(), "keys/s")
		})
	}
}

// BenchmarkStrike measures farm.Node.Strike over NATS (the strike, then a
// read of the register's marker) against ConsumeToken alone (the strike as
// it was before the marker), one fresh identity a call.
func BenchmarkStrike(b *testing.B) {
	ms, _ := farmtest.Start(b, 1, &farmtest.Options{NewTransport: natsTransport(sharedURL(b))})
	node := ms[0].Node
	later := time.Now().Add(time.Hour) // issued after the register began
	seq := 0
	for _, bc := range []struct {
		name string
		op   func(id []byte) (bool, error)
	}{
		{"consume-token", func(id []byte) (bool, error) { return node.ConsumeToken(context.Background(), id, time.Minute) }},
		{"strike", func(id []byte) (bool, error) { return node.Strike(context.Background(), id, later, time.Minute) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				seq++
				if ok, err := bc.op(fmt.Appendf(nil, "ticket-%d", seq)); !ok || err != nil {
					b.Fatalf("%v, %v", ok, err)
				}
			}
		})
	}
}

// BenchmarkWriteBack measures a write-back batch (256 sessions of 300
// bytes into a store that lost them: every key absent) written plain (as
// writeBack did) and as Item.NoLonger (a read and a write on the revision
// read, per key), against the shared server.
func BenchmarkWriteBack(b *testing.B) {
	farmtest.BenchmarkWriteBack(b, func(b *testing.B) transport.RecordStore {
		return open(b, sharedURL(b), farmtest.FarmName(b))
	})
}

// BenchmarkSetAdd: a revocation's store write, the member and the set's
// version in one round trip.
func BenchmarkSetAdd(b *testing.B) {
	farmtest.BenchmarkSetAdd(b, func(b *testing.B) transport.Coordinator {
		return open(b, sharedURL(b), farmtest.FarmName(b))
	})
}

// BenchmarkReceive measures the bus's receive path: batches of 256
// messages of 300 bytes published at once, each batch waited for until
// the subscriber has delivered all of it, with the delivery mark off
// (Options.MarkInterval negative), at its default interval, and every
// millisecond.
func BenchmarkReceive(b *testing.B) {
	for _, c := range []struct {
		name     string
		interval time.Duration
	}{{"mark=off", -1}, {"mark=default", 0}, {"mark=1ms", time.Millisecond}} {
		b.Run(c.name, func(b *testing.B) {
			url := sharedURL(b)
			name := farmtest.FarmName(b)
			sub, err := natsbus.Open(url, name, &natsbus.Options{MarkInterval: c.interval})
			if err != nil {
				b.Fatal(err)
			}
			defer sub.Close()
			pub := open(b, url, name)
			var got atomic.Int64
			farmtest.Subscribed(b, sub, func([]byte) { got.Add(1) })
			batch := make([][]byte, 256)
			for i := range batch {
				batch[i] = make([]byte, 300)
			}
			ctx := context.Background()
			var want int64
			b.ReportAllocs()
			for b.Loop() {
				if err := pub.Publish(ctx, batch...); err != nil {
					b.Fatal(err)
				}
				want += int64(len(batch))
				deadline := time.Now().Add(5 * time.Second)
				for got.Load() < want {
					if time.Now().After(deadline) {
						b.Fatalf("%d of %d messages delivered in 5s", got.Load(), want)
					}
					runtime.Gosched()
				}
			}
			b.ReportMetric(float64(want)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkDeliveredThrough measures reading the delivery mark, as the
// farm does before it takes a carried session, with the subscription up.
func BenchmarkDeliveredThrough(b *testing.B) {
	tr := open(b, sharedURL(b), farmtest.FarmName(b))
	farmtest.Subscribed(b, tr, func([]byte) {})
	for tr.DeliveredThrough().IsZero() {
		time.Sleep(time.Millisecond)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if tr.DeliveredThrough().IsZero() {
				b.Error("DeliveredThrough is zero with the subscription up")
				return
			}
		}
	})
}

// BenchmarkRetire measures a retirement's store write against the shared
// NATS server: a plain deletion (DeleteRecords, a purge: what a
// retirement was before retirement marks, and what a consumption's still
// is) and an Item.Retire (a purge that carries the mark), over a key that
// holds no record.
func BenchmarkRetire(b *testing.B) {
	tr := open(b, sharedURL(b), farmtest.FarmName(b))
	ctx := context.Background()
	b.Run("delete", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if err := tr.DeleteRecords(ctx, fmt.Sprint("s:d", i)); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("retire", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if err := tr.PutRecords(ctx, transport.Item{Key: fmt.Sprint("s:r", i), TTL: 10 * time.Second, Retire: true}); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}

// BenchmarkTake measures a take (TakeRecord: a read and a conditional
// purge) of a present record of about a sealed session's size, the take of
// a single-use resumption, on the shared NATS server.
func BenchmarkTake(b *testing.B) {
	tr := open(b, sharedURL(b), farmtest.FarmName(b))
	ctx := context.Background()
	value := make([]byte, 300)
	items := make([]transport.Item, b.N)
	for i := range items {
		items[i] = transport.Item{Key: fmt.Sprintf("s:t%d-%d", b.N, i), Value: value, TTL: time.Minute}
	}
	for i := 0; i < len(items); i += 256 {
		if err := tr.PutRecords(ctx, items[i:min(i+256, len(items))]...); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range items {
		if _, err := tr.TakeRecord(ctx, items[i].Key); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTakeCluster is BenchmarkTake on a three-server cluster in the
// benchmark's process, the client on a server that follows the leader of
// the bucket's stream (see BenchmarkGetCluster): the take's read is the
// leader's, one route away, as is its purge.
func BenchmarkTakeCluster(b *testing.B) {
	c := natstest.StartCluster(b, 3)
	name := farmtest.FarmName(b)
	w := openURL(b, c.Servers[0].ClientURL(), name)
	ctx := context.Background()
	if err := w.PutRecords(ctx, transport.Item{Key: "s:0001", Value: make([]byte, 300), TTL: time.Minute}); err != nil {
		b.Fatal(err)
	}
	tr := openURL(b, followerURL(b, c, w.Bucket()), name)
	value := make([]byte, 300)
	n := 0
	var lat []time.Duration
	b.ReportAllocs()
	for b.Loop() {
		// Written between the timings, 256 at a time.
		if n%256 == 0 {
			b.StopTimer()
			items := make([]transport.Item, 256)
			for i := range items {
				items[i] = transport.Item{Key: fmt.Sprintf("s:t%d", n+i), Value: value, TTL: time.Minute}
			}
			if err := w.PutRecords(ctx, items...); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
		start := time.Now()
		if _, err := tr.TakeRecord(ctx, fmt.Sprintf("s:t%d", n)); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		n++
	}
	farmtest.ReportPercentiles(b, lat)
}

// followerURL returns the client URL of a server of c that follows the
// leader of bucket's stream and is current with it.
func followerURL(b *testing.B, c *natstest.Cluster, bucket string) string {
	b.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, s := range c.Servers {
			if led := s.JetStreamIsStreamLeader("$G", "KV_"+bucket); !led && s.JetStreamIsStreamCurrent("$G", "KV_"+bucket) {
				return s.ClientURL()
			}
		}
		if time.Now().After(deadline) {
			b.Fatal("no current follower of the bucket's stream within 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// BenchmarkFirstWrite writes new sessions of 300 bytes, each to a key
// never written before, as a farm writes its new sessions: plain writes,
// and late writes (Item.Late: a create that expects the key to hold no
// message, the farm's first write where the bus may overtake it), in
// batches of 256 and one at a time.
func BenchmarkFirstWrite(b *testing.B) {
	for _, c := range []struct {
		name string
		n    int
		late bool
	}{{"plain/256", 256, false}, {"late/256", 256, true}, {"plain/1", 1, false}, {"late/1", 1, true}} {
		b.Run(c.name, func(b *testing.B) {
			tr := open(b, sharedURL(b), farmtest.FarmName(b))
			ctx := context.Background()
			items := make([]transport.Item, c.n)
			value := make([]byte, 300)
			k := 0
			b.ReportAllocs()
			for b.Loop() {
				for i := range items {
					items[i] = transport.Item{Key: fmt.Sprintf("s:%08x", k), Value: value, TTL: time.Minute, Late: c.late}
					k++
				}
				if err := tr.PutRecords(ctx, items...); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*len(items))/b.Elapsed().Seconds(), "keys/s")
		})
	}
}

// BenchmarkSetMembers measures a read of a set whole, what a node's heal
// does when the farm's revocations changed: plainly and marked
// transport.PrimaryRead (the heal's), of an empty set and of one of 100
// members, on the embedded server.
func BenchmarkSetMembers(b *testing.B) {
	for _, n := range []int{0, 100} {
		for _, mode := range []string{"plain", "primary"} {
			b.Run(fmt.Sprintf("%s/members=%d", mode, n), func(b *testing.B) {
				tr := open(b, embedded(b), farmtest.FarmName(b))
				ctx := context.Background()
				until := time.Now().Add(time.Hour)
				for i := range n {
					if err := tr.SetAdd(ctx, "set", fmt.Appendf(nil, "member-%04d", i), until); err != nil {
						b.Fatal(err)
					}
				}
				if mode == "primary" {
					ctx = transport.PrimaryRead(ctx)
				}
				b.ReportAllocs()
				b.ResetTimer()
				for b.Loop() {
					m, err := tr.SetMembers(ctx, "set")
					if err != nil {
						b.Fatal(err)
					}
					if len(m) != n {
						b.Fatalf("SetMembers = %d members; want %d", len(m), n)
					}
				}
			})
		}
	}
}
