package proxy

import (
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"
)

// FuzzProxyHeader sends arbitrary bytes as the PROXY protocol header of a
// connection from a trusted sender, then a TLS handshake, to a real
// server: whatever the header, the server must neither crash nor stall,
// and must go on serving the next connection with a good header.
func FuzzProxyHeader(f *testing.F) {
	cert := mustSelfSigned(f, "localhost")
	s, _ := start(f, cert, func(c *Config) {
		c.HandshakeTimeout = 300 * time.Millisecond
		c.Listeners[0].ProxyProtocol = true
		c.Listeners[0].ProxyTrusted = []string{"127.0.0.0/8"}
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	})
	addr := s.Addrs()[0]
	good := []byte("PROXY TCP4 192.0.2.1 192.0.2.2 40000 443\r\n")
	v2 := []byte("\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\xc0\x00\x02\x01\xc0\x00\x02\x02\x9c\x40\x01\xbb")
	f.Add(good)
	f.Add(v2)
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Add([]byte("PROXY TCP6 ::1 ::1 1 1\r\n"))
	f.Add([]byte("\r\n\r\n\x00\r\nQUIT\n\x21\x31\x00\x08abcdefgh")) // AF_UNIX, short
	f.Add([]byte("\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x14\xc0\x00\x02\x01\xc0\x00\x02\x02\x9c\x40\x01\xbb\x04\x00\x05hello"))
	dial := func(t *testing.T, header []byte) error {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(header); err != nil {
			return err
		}
		tc := tls.Client(c, client("localhost", cert))
		return tc.Handshake()
	}
	f.Fuzz(func(t *testing.T, header []byte) {
		// Any header may fail the handshake, but within the server's
		// handshake timeout, not the client's deadline.
		if err := dial(t, header); errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("the header %q held the connection past 5s", header)
		}
		if err := dial(t, good); err != nil {
			t.Fatalf("after the header %q, a good one fails: %v", header, err)
		}
	})
}
