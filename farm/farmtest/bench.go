package farmtest

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// BenchmarkPublish publishes on pub batches of 256 messages of 300 bytes
// (the farm's default batch, about the size of a sealed TLS 1.3 session)
// with sub, a bus of the same farm, receiving them. It reports msgs/s.
func BenchmarkPublish(b *testing.B, pub, sub transport.Bus) {
	Subscribed(b, sub, func([]byte) {})
	batch := make([][]byte, 256)
	for i := range batch {
		batch[i] = make([]byte, 300)
	}
	ctx := context.Background()
	if err := pub.Publish(ctx, batch[0]); err != nil { // connect
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := pub.Publish(ctx, batch...); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(batch))/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkPropagation measures the time from Publish on pub to delivery
// on sub, a bus of the same farm, one message of 300 bytes at a time, and
// reports its p50 and p99.
func BenchmarkPropagation(b *testing.B, pub, sub transport.Bus) {
	got := make(chan time.Duration, 1)
	Subscribed(b, sub, func(m []byte) {
		sent := time.Unix(0, int64(binary.BigEndian.Uint64(m)))
		got <- time.Since(sent)
	})
	ctx := context.Background()
	msg := make([]byte, 300)
	if err := pub.Publish(ctx, msg); err != nil { // connect
		b.Fatal(err)
	}
	<-got
	var lat []time.Duration
	for b.Loop() {
		binary.BigEndian.PutUint64(msg, uint64(time.Now().UnixNano()))
		if err := pub.Publish(ctx, msg); err != nil {
			b.Fatal(err)
		}
		select {
		case d := <-got:
			lat = append(lat, d)
		case <-time.After(5 * time.Second):
			b.Fatal("message not delivered within 5s")
		}
	}
	ReportPercentiles(b, lat)
}

// Subscribed runs bus.Subscribe with deliver until the test or benchmark
// ends, and waits until the subscription reports that it is up.
func Subscribed(b testing.TB, bus transport.Bus, deliver func([]byte)) {
	b.Helper()
	SubscribedUntil(b, bus, deliver, nil)
}

// SubscribedUntil is Subscribed that also calls onUp, if not nil, each time
// the subscription reports that it is up (again, after an outage), and
// returns a function that ends the subscription before the test does and
// waits until Subscribe has returned. Calling it more than once is safe.
func SubscribedUntil(b testing.TB, bus transport.Bus, deliver func([]byte), onUp func()) (stop func()) {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	up := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		bus.Subscribe(ctx, deliver, func(ok bool, _ error) {
			if ok {
				if onUp != nil {
					onUp()
				}
				select {
				case up <- struct{}{}:
				default:
				}
			}
		})
	}()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	b.Cleanup(stop)
	select {
	case <-up:
	case <-time.After(10 * time.Second):
		b.Fatal("Subscribe never reported up")
	}
	return stop
}

// ReportPercentiles reports the p50 and p99 of lat, in microseconds, as the
// benchmark's p50-µs and p99-µs metrics. It sorts lat.
func ReportPercentiles(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	p := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))].Microseconds()) }
	b.ReportMetric(p(0.50), "p50-µs")
	b.ReportMetric(p(0.99), "p99-µs")
}

// BenchmarkWriteBack writes batches of 256 records of 300 bytes to keys
// that were never written, as a write-back into a store that lost its
// data does: plain, and marked Item.NoLonger. open makes the store for
// each sub-benchmark. It reports keys/s.
func BenchmarkWriteBack(b *testing.B, open func(*testing.B) transport.RecordStore) {
	for _, noLonger := range []bool{false, true} {
		b.Run(fmt.Sprintf("nolonger=%v/256", noLonger), func(b *testing.B) {
			s := open(b)
			ctx := context.Background()
			items := make([]transport.Item, 256)
			value := make([]byte, 300)
			round := 0
			b.ReportAllocs()
			for b.Loop() {
				for i := range items {
					items[i] = transport.Item{Key: fmt.Sprintf("s:%d-%d", round, i), Value: value, TTL: time.Minute, NoLonger: noLonger}
				}
				round++
				if err := s.PutRecords(ctx, items...); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*len(items))/b.Elapsed().Seconds(), "keys/s")
		})
	}
}

// BenchmarkSetAdd measures the store write of one revocation, a 150-byte
// member added to the set "revoked" of the Coordinator open returns, with
// the set's version as the transport keeps it.
func BenchmarkSetAdd(b *testing.B, open func(*testing.B) transport.Coordinator) {
	tr := open(b)
	ctx := context.Background()
	until := time.Now().Add(time.Minute)
	m := make([]byte, 150)
	b.ResetTimer()
	for i := range b.N {
		binary.LittleEndian.PutUint32(m, uint32(i))
		if err := tr.SetAdd(ctx, "revoked", m, until); err != nil {
			b.Fatal(err)
		}
	}
}
