package amqpbus_test

import (
	"io"
	"testing"

	"github.com/tlsfarm/tlsfarm/farm/amqpbus"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
)

// TestRepeatedURLOptionRefused: an option given twice is an error that
// names it and not the password; before the fix amqp091-go took the first
// value without a word.
func TestRepeatedURLOptionRefused(t *testing.T) {
	farmtest.TestOpenURLs(t, func(url string) (io.Closer, error) { return amqpbus.Open(url, "f", nil) }, map[string]string{
		"amqp://user:s3cret@127.0.0.1/?heartbeat=0&heartbeat=5":                 `option "heartbeat" is given 2 times`,
		"amqps://user:s3cret@127.0.0.1/?channel_max=1&channel_max=2&certfile=x": `option "channel_max" is given 2 times`,
		"amqp://127.0.0.1/?bogus=1&bogus=2":                                     `option "bogus" is given 2 times`,
		"amqp://127.0.0.1/?heartbeat=0&channel_max=10":                          "",
	})
}
