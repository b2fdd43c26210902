package amqpbus_test

import (
	"crypto/tls"
	"io"
	"testing"

	"github.com/tlsfarm/tlsfarm/farm/amqpbus"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
)

// TestURLOptionsThatWouldBeIgnored: options amqp091-go reads but would
// ignore, or take only at the first dial, are errors that name them (and
// not the password): TLS options on an amqp:// URL (a client certificate
// asked for, and the password then sent in the clear), one of certfile
// and keyfile without the other (no client certificate, silently), TLS
// options beside Options.TLSConfig (which overrides them), and an
// auth_mechanism amqp091-go does not know (every dial failed, and Open,
// and so tlsfarm check, said nothing).
func TestURLOptionsThatWouldBeIgnored(t *testing.T) {
	farmtest.TestOpenURLs(t, func(url string) (io.Closer, error) { return amqpbus.Open(url, "f", nil) }, map[string]string{
		"amqp://user:s3cret@127.0.0.1/?certfile=c.pem&keyfile=k.pem":        "certfile",
		"amqp://user:s3cret@127.0.0.1/?cacertfile=ca.pem":                   "cacertfile",
		"amqp://127.0.0.1/?server_name_indication=b.example":                "server_name_indication",
		"amqps://user:s3cret@127.0.0.1/?certfile=c.pem":                     "keyfile",
		"amqps://127.0.0.1/?keyfile=k.pem":                                  "certfile",
		"amqps://127.0.0.1/?certfile=c.pem&keyfile=k.pem&cacertfile=ca.pem": "",
		"amqp://user:s3cret@127.0.0.1/?auth_mechanism=SCRAM-SHA-256":        "auth_mechanism",
		"amqp://127.0.0.1/?auth_mechanism=plain":                            "",
		"amqps://127.0.0.1/?auth_mechanism=EXTERNAL":                        "",
		"amqp://user:s3cret@127.0.0.1/?heartbeat=abc":                       "heartbeat",
		"amqp://user:s3cret@127.0.0.1/?channel_max=70000":                   "channel_max",
	})
	withConfig := &amqpbus.Options{TLSConfig: &tls.Config{}}
	farmtest.TestOpenURLs(t, func(url string) (io.Closer, error) { return amqpbus.Open(url, "f", withConfig) }, map[string]string{
		"amqps://user:s3cret@127.0.0.1/?cacertfile=ca.pem": "TLSConfig",
		"amqps://127.0.0.1/": "",
	})
}
