package proxy

import (
	"context"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// TestHTTP3StalledRequestHeadersAreCut opens an HTTP/3 request stream and
// sends the first byte of its HEADERS frame, then nothing: as over TCP
// (ReadHeaderTimeout), the idle timeout must end the connection. quic-go's
// HTTP/3 server reads a request's headers without any deadline and stops
// its own idle timer once a request stream opens, and the server's QUIC
// keep-alive pings (which the client's stack acknowledges) keep QUIC's idle
// timeout from ever firing: the connection, and its slot under
// MaxConnections, were held for ever.
func TestHTTP3StalledRequestHeadersAreCut(t *testing.T) {
	const idle = 300 * time.Millisecond
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) {
		c.Listeners[0].HTTP3 = true
		c.IdleTimeout = idle
	})
	tlsConf := client("localhost", cert)
	tlsConf.NextProtos = []string{http3.NextProtoH3}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := quic.DialAddr(ctx, s.Addrs()[0], tlsConf, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	str, err := conn.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := str.Write([]byte{0x01}); err != nil { // a HEADERS frame's type, and no more
		t.Fatal(err)
	}
	t0 := time.Now()
	select {
	case <-conn.Context().Done():
	case <-time.After(10 * idle):
		t.Fatalf("a request stream stalled in its headers held the connection for %v (idle timeout %v); QUIC connections open: %d",
			time.Since(t0), idle, s.QUICStats().Open)
	}
	waitFor(t, func() bool { return s.QUICStats().Open == 0 }, "QUIC connection still counted open: %+v", s.QUICStats())
}
