package natsbus_test

import (
	"io"
	"testing"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
)

// TestRepeatedURLOptionRefused: an option given twice, in one server's
// part of the URL or in two, is an error that names it and not the token.
// Before the fix a repeat in one part was called an unknown option, and
// the same value in two parts was taken.
func TestRepeatedURLOptionRefused(t *testing.T) {
	farmtest.TestOpenURLs(t, func(url string) (io.Closer, error) { return natsbus.Open(url, "f", nil) }, map[string]string{
		"nats://s3cret@127.0.0.1:4222?replicas=1&replicas=3":                                  `option "replicas" is given 2 times`,
		"nats://127.0.0.1:4222?pending_msgs=5&pending_bytes=9&pending_msgs=5":                 `option "pending_msgs" is given 2 times`,
		"nats://u:s3cret@127.0.0.1:4222?replicas=3,nats://u:s3cret@127.0.0.1:4223?replicas=3": `option "replicas" is given 2 times`,
		"nats://127.0.0.1:4222?replicas=3,nats://127.0.0.1:4223?pending_bytes=-1":             "",
	})
}
