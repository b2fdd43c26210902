package amqpbus_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/amqpbus"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
)

// BenchmarkPublish publishes batches of 256 messages of 300 bytes (the
// farm's default batch, about the size of a sealed TLS 1.3 session) with
// one subscriber receiving them, with and without publisher confirms.
func BenchmarkPublish(b *testing.B) {
	url := brokerURL(b)
	for _, bc := range []struct {
		name string
		opts *amqpbus.Options
	}{{"confirms", nil}, {"no-confirms", &amqpbus.Options{NoConfirm: true}}} {
		b.Run(bc.name, func(b *testing.B) {
			name := farmtest.FarmName(b)
			farmtest.BenchmarkPublish(b, open(b, url, name, bc.opts), open(b, url, name, nil))
		})
	}
}

// BenchmarkPropagation measures the time from Publish (with confirms) on
// one bus to delivery on another, one message at a time, and reports its
// p50 and p99.
func BenchmarkPropagation(b *testing.B) {
	url := brokerURL(b)
	name := farmtest.FarmName(b)
	farmtest.BenchmarkPropagation(b, open(b, url, name, nil), open(b, url, name, nil))
}

// BenchmarkResubscribeBacklog: a Bus's subscription comes back to its
// kept queue holding 20 000 messages of 1 KiB, published while it was
// stopped, and reports the time to its state up (up-ms) and to the last
// of them delivered (drained-ms): with the default byte bound (the backlog
// could be full by bytes, so the Bus reads it once before it reports up)
// and with none (QueueBytes -1).
func BenchmarkResubscribeBacklog(b *testing.B) {
	url := brokerURL(b)
	const n, size = 20000, 1 << 10
	for _, bc := range []struct {
		name  string
		bytes int64
	}{{"bound", 0}, {"none", -1}} {
		b.Run(bc.name, func(b *testing.B) {
			name := farmtest.FarmName(b)
			pub := open(b, url, name, nil)
			sub := open(b, url, name, &amqpbus.Options{QueueBytes: bc.bytes})
			got := make(chan struct{}, 2*n)
			states := make(chan bool, 16)
			subscribe := func() (stop func()) {
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				go func() {
					defer close(done)
					sub.Subscribe(ctx, func([]byte) { got <- struct{}{} }, func(up bool, _ error) { states <- up })
				}()
				return func() { cancel(); <-done }
			}
			stop := subscribe()
			for !<-states {
			}
			stop()
			batch := make([][]byte, 256)
			for i := range batch {
				batch[i] = bytes.Repeat([]byte("x"), size)
			}
			var up, drained time.Duration
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				for len(got) > 0 { // redelivered after the last stop
					<-got
				}
				for i := 0; i < n; i += len(batch) {
					if err := pub.Publish(context.Background(), batch[:min(len(batch), n-i)]...); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				start := time.Now()
				stop = subscribe()
				for !<-states {
				}
				up += time.Since(start)
				for range n {
					<-got
				}
				drained += time.Since(start)
				b.StopTimer()
				stop()
			}
			b.ReportMetric(float64(up.Milliseconds())/float64(b.N), "up-ms")
			b.ReportMetric(float64(drained.Milliseconds())/float64(b.N), "drained-ms")
		})
	}
}
