package amqpbus_test

import (
	"io"
	"testing"

	"github.com/tlsfarm/tlsfarm/farm/amqpbus"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
)

// TestURLSecretsNotShown: a password with an unencoded "/", "?" or "#"
// ends the host early; before the fix url.Parse's reason quoted it as a
// port, or (for a lone user name) Open took its first part for the host,
// which a failed dial would name. Now either is an error that shows none
// of it. A vhost may hold an "@" percent-encoded.
func TestURLSecretsNotShown(t *testing.T) {
	farmtest.TestOpenURLs(t, func(url string) (io.Closer, error) { return amqpbus.Open(url, "f", nil) }, map[string]string{
		"amqp://u:s3cret/x@127.0.0.1/":              "bad URL",
		"amqps://u:s3cret?x@127.0.0.1/":             "bad URL",
		"amqp://u:s3cret#x@127.0.0.1/":              "bad URL",
		"amqp://s3cret/x@127.0.0.1/":                `"@" after the host`,
		"amqp://s3cret#x@127.0.0.1/":                `"@" after the host`,
		"amqp://u:s3cret@127.0.0.1/v%40h":           "",
		"amqp://u:5672?heartbeat=s3cret@127.0.0.1/": `"@" after the host`,
	})
}
