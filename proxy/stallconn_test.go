package proxy

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// cutWithin is how long after the idle timeout a connection whose client
// stopped reading may stay open: well short of the 5 s crypto/tls's Close
// would spend on close_notify, which a timed-out write skips (conn.Write).
const cutWithin = 2500 * time.Millisecond

// smallReceiveBuffer dials with a small receive buffer, so that the path
// from the server fills quickly once the client stops reading (see also
// shrinkSendBuffers).
var smallReceiveBuffer = &net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
	return rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
}}

// shrinkSendBuffers gives the sockets of the connections s has accepted a
// small send buffer: with the client's small receive buffer, a few answers
// fill the path, even on a machine too busy to send megabytes quickly.
func shrinkSendBuffers(t *testing.T, s *Server) {
	t.Helper()
	waitFor(t, func() bool { return s.Stats().Open > 0 }, "no connection accepted")
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		rc, err := c.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, 4096) })
	}
}

// TestPipeliningClientThatStopsReadingIsCut sends HTTP/1.1 requests back
// to back on one connection and reads none of the answers. Once the
// answers fill the path to the client, net/http's flush of the next one,
// after its handler has returned, waits for the client: the idle timeout
// must end it and the connection (each write of a response waits at most
// that long), not leave both open for ever.
func TestPipeliningClientThatStopsReadingIsCut(t *testing.T) {
	const idle = 300 * time.Millisecond
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) { c.IdleTimeout = idle })
	tc, err := tls.DialWithDialer(smallReceiveBuffer, "tcp", s.Addrs()[0], client("localhost", cert))
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	shrinkSendBuffers(t, s)
	go func() {
		req := []byte("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
		for range 200000 {
			tc.SetWriteDeadline(time.Now().Add(20 * time.Second))
			if _, err := tc.Write(req); err != nil {
				return
			}
		}
	}()
	waitClosed(t, s, idle+cutWithin)
}

// TestHTTP2ClientThatStopsReadingIsCut opens HTTP/2 with the largest flow
// control windows, asks for large answers and reads nothing: once the
// server's frame writes wait for the client, the idle timeout must end
// the connection.
func TestHTTP2ClientThatStopsReadingIsCut(t *testing.T) {
	const idle = 300 * time.Millisecond
	big := bytes.Repeat([]byte("x"), 1<<20)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(big) }))
	defer up.Close()
	defer up.CloseClientConnections()
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) {
		c.IdleTimeout = idle
		c.Listeners[0].Upstream = up.URL
		c.Listeners[0].NextProtos = []string{"h2"}
	})
	cfg := client("localhost", cert)
	cfg.NextProtos = []string{"h2"}
	tc, err := tls.DialWithDialer(smallReceiveBuffer, "tcp", s.Addrs()[0], cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	shrinkSendBuffers(t, s)
	must(t, tc.ConnectionState().NegotiatedProtocol == "h2", "negotiated %q, not h2", tc.ConnectionState().NegotiatedProtocol)
	tc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	tc.Write([]byte(http2.ClientPreface))
	fr := http2.NewFramer(tc, nil)
	fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
	fr.WriteWindowUpdate(0, 1<<31-1-65535)
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for id := uint32(1); id < 64; id += 2 { // 32 MiB asked for
		hb.Reset()
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "localhost"}, {":path", fmt.Sprintf("/%d", id)}} {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
	}
	waitClosed(t, s, idle+cutWithin)
}

// waitClosed waits at most within for s to have no connection open.
func waitClosed(t *testing.T, s *Server, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for s.Stats().Open > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("connection still open %v after its client stopped reading", within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tlsDialSmall dials addr over TLS with a small receive buffer (see
// smallReceiveBuffer).
func tlsDialSmall(addr string, cfg *tls.Config) (*tls.Conn, error) {
	return tls.DialWithDialer(smallReceiveBuffer, "tcp", addr, cfg)
}
