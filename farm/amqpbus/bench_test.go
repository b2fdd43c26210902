package amqpbus_test

import (
	"testing"

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
