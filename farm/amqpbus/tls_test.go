package amqpbus_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/pem"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	"github.com/tlsfarm/tlsfarm/farm/amqpbus"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
)

// tlsFront starts a TLS listener, with cert, that forwards each
// connection's plaintext to the broker at target, and returns its
// address: the machine's RabbitMQ has no TLS port.
func tlsFront(t *testing.T, target string, cert tls.Certificate) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	relayTo(t, ln, target, nil)
	return ln.Addr().String()
}

// TestTLS: an amqps:// bus does TLS itself (beneath the guard that cuts
// messages too long to read), with Options.TLSConfig, and with the URL's
// cacertfile and server_name_indication: it subscribes, receives a
// message, and leaves one of 4 MiB unread.
func TestTLS(t *testing.T) {
	plain := brokerURL(t)
	cert, pool := tlstest.Cert(t, "broker.example")
	front := tlsFront(t, brokerAddr(plain), cert)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600); err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(plain)
	u.Scheme, u.Host = "amqps", front
	for _, tc := range []struct {
		name, url string
		opts      *amqpbus.Options
	}{
		{"TLSConfig", u.String(), &amqpbus.Options{TLSConfig: &tls.Config{RootCAs: pool}}},
		{"URL", u.String() + "?cacertfile=" + url.QueryEscape(ca) + "&server_name_indication=broker.example", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := farmtest.FarmName(t)
			pub := open(t, plain, name, nil)
			sub := open(t, tc.url, name, tc.opts)
			l, _ := subscribeLogged(t, sub)
			if err := l.next(t, true); err != nil {
				t.Fatalf("subscribed with %v", err)
			}
			publishRaw(t, plain, sub.Exchange(), bytes.Repeat([]byte("x"), 4<<20))
			publish(t, pub, "after")
			l.waitFor(t, "after")
			if got := l.delivered(); len(got) != 1 {
				t.Fatalf("delivered %d messages, want 1", len(got))
			}
			if err := sub.Publish(context.Background(), []byte("from the TLS bus")); err != nil {
				t.Fatal(err)
			}
		})
	}
}
