package natsbus_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
)

// subscribed starts bus.Subscribe until the benchmark ends and waits until
// it is up.
func subscribed(b *testing.B, bus farm.Bus, deliver func([]byte)) {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	up := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		bus.Subscribe(ctx, deliver, func(ok bool, _ error) {
			if ok {
				select {
				case up <- struct{}{}:
				default:
				}
			}
		})
	}()
	b.Cleanup(func() { cancel(); <-done })
	select {
	case <-up:
	case <-time.After(10 * time.Second):
		b.Fatal("Subscribe never reported up")
	}
}

// BenchmarkPublish publishes batches of 256 messages of 300 bytes (the
// farm's default batch, about the size of a sealed TLS 1.3 session) with
// one subscriber receiving them.
func BenchmarkPublish(b *testing.B) {
	url := sharedURL(b)
	name := farmName(b)
	pub, sub := open(b, url, name), open(b, url, name)
	subscribed(b, sub, func([]byte) {})
	batch := make([][]byte, 256)
	for i := range batch {
		batch[i] = make([]byte, 300)
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := pub.Publish(ctx, batch...); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(batch))/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkPropagation measures the time from Publish on one bus to
// delivery on another, one message at a time, and reports its p50 and p99.
func BenchmarkPropagation(b *testing.B) {
	url := sharedURL(b)
	name := farmName(b)
	pub, sub := open(b, url, name), open(b, url, name)
	got := make(chan time.Duration, 1)
	subscribed(b, sub, func(m []byte) {
		sent := time.Unix(0, int64(binary.BigEndian.Uint64(m)))
		got <- time.Since(sent)
	})
	ctx := context.Background()
	msg := make([]byte, 300)
	var lat []time.Duration
	b.ResetTimer()
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
	reportPercentiles(b, lat)
}

// BenchmarkGet measures a store lookup of a present key: what a handshake
// waits for on a local cache miss.
func BenchmarkGet(b *testing.B) {
	tr := open(b, sharedURL(b), farmName(b))
	ctx := context.Background()
	if err := tr.PutMany(ctx, farm.Item{Key: "s:0001", Value: make([]byte, 300), TTL: time.Minute}); err != nil {
		b.Fatal(err)
	}
	var lat []time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		if _, err := tr.Get(ctx, "s:0001"); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	reportPercentiles(b, lat)
}

// BenchmarkPutMany writes batches of 256 sessions of 300 bytes, as the
// farm's publisher does in broadcast and store-only modes.
func BenchmarkPutMany(b *testing.B) {
	tr := open(b, sharedURL(b), farmName(b))
	ctx := context.Background()
	items := make([]farm.Item, 256)
	for i := range items {
		items[i] = farm.Item{Key: fmt.Sprintf("s:%04x", i), Value: make([]byte, 300), TTL: time.Minute}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := tr.PutMany(ctx, items...); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(items))/b.Elapsed().Seconds(), "keys/s")
}

func reportPercentiles(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	p := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))].Microseconds()) }
	b.ReportMetric(p(0.50), "p50-µs")
	b.ReportMetric(p(0.99), "p99-µs")
}
