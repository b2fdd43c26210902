package proxy

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"golang.org/x/net/http2"

	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/metric"
)

// wsHeader is what the test clients send with each WebSocket.
var wsHeader = http.Header{"Sec-Websocket-Version": {"13"}}

// TestWebSocketMetricsFollowEachProtocol opens WebSockets over HTTP/1.1,
// HTTP/2 and HTTP/3 through the reverse proxy and checks that the
// WebSocket samples follow them: open goes up with each and back to 0 once
// each has closed, the total counts every one, and the refusals count, by
// reason, an upstream that refuses (403, passed on) and one that answers
// 2xx without switching (502).
func TestWebSocketMetricsFollowEachProtocol(t *testing.T) {
	if !withXConnect(t) {
		return
	}
	up := newWSUpstream(t)
	cert := mustSelfSigned(t, "localhost")
	s := startWSProxy(t, cert, up.URL, 0)
	addr := s.Addrs()[0]
	for _, proto := range []string{"h1", "h2", "h3"} {
		t.Run(proto, func(t *testing.T) {
			open := func() float64 { return wsSample(t, s, "tlsfarm_websockets_open", "proto", proto) }
			total := func() float64 { return wsSample(t, s, "tlsfarm_websockets_total", "proto", proto) }
			refused := func(reason string) float64 {
				return wsSample(t, s, "tlsfarm_websockets_refused_total", "proto", proto, "reason", reason)
			}
			switched := map[string]int{"h1": http.StatusSwitchingProtocols}[proto]
			if switched == 0 {
				switched = http.StatusOK
			}
			var wss []*wsConn
			for i := range 2 {
				ws := dialWS(t, proto, addr, cert, "/echo", wsHeader)
				<-up.requests
				must(t, ws.status == switched, "status %d", ws.status)
				must(t, open() == float64(i+1) && total() == float64(i+1), "WebSocket %d open: open %v, total %v", i, open(), total())
				wss = append(wss, ws)
			}
			if proto == "h1" {
				// A switched connection keeps its slot of
				// MaxConnections: HTTP/1.1 WebSockets need no
				// bound of their own.
				must(t, s.Stats().Open == 2, "TCP connections open with two HTTP/1.1 WebSockets: %d", s.Stats().Open)
			}
			for i, ws := range wss {
				echo(t, ws, "hello")
				closeWS(t, ws)
				waitFor(t, func() bool { return open() == float64(1-i) }, "WebSocket %d closed: open %v", i, open())
			}
			must(t, total() == 2, "total %v", total())

			ws := dialWS(t, proto, addr, cert, "/refuse", wsHeader)
			<-up.requests
			must(t, ws.status == http.StatusForbidden, "status %d", ws.status)
			must(t, refused("upstream") == 1, "refused by the upstream: %v", refused("upstream"))
			if proto != "h1" { // over HTTP/1.1 a 200 is passed on as a refusal
				ws = dialWS(t, proto, addr, cert, "/ok", wsHeader)
				<-up.requests
				must(t, ws.status == http.StatusBadGateway, "status %d", ws.status)
				must(t, refused("upstream_error") == 1, "upstream errors: %v", refused("upstream_error"))
			}
			must(t, open() == 0 && total() == 2, "after refusals: open %v, total %v", open(), total())
		})
	}
	noGoroutineIn(t, "serveWebSocket")
}

// TestWebSocketUnreachableUpstreamCounts opens WebSockets over each
// protocol to an upstream that is not listening: each gets 502, and counts
// as refused for an upstream error, never as open.
func TestWebSocketUnreachableUpstreamCounts(t *testing.T) {
	if !withXConnect(t) {
		return
	}
	gone := "http://" + nettest.Refused(t) // held: no other test's server takes the port
	cert := mustSelfSigned(t, "localhost")
	s := startWSProxy(t, cert, gone, 0)
	for _, proto := range []string{"h1", "h2", "h3"} {
		ws := dialWS(t, proto, s.Addrs()[0], cert, "/", wsHeader)
		must(t, ws.status == http.StatusBadGateway, "%s: status %d", proto, ws.status)
		n := wsSample(t, s, "tlsfarm_websockets_refused_total", "proto", proto, "reason", "upstream_error")
		must(t, n == 1, "%s: upstream errors %v", proto, n)
		must(t, wsSample(t, s, "tlsfarm_websockets_total", "proto", proto) == 0, "%s: counted as opened", proto)
	}
}

// TestWebSocketsPerConnectionBound opens WebSockets over one HTTP/2 and
// one HTTP/3 connection, more than MaxWebSocketsPerConnection: those past
// the bound get 429 at once and never reach the upstream, and are counted;
// once one closes, the connection may open another; other connections are
// not held back; and a reload raises the bound for the WebSockets opened
// from then on.
func TestWebSocketsPerConnectionBound(t *testing.T) {
	if !withXConnect(t) {
		return
	}
	const bound = 3
	up := newWSUpstream(t)
	cert := mustSelfSigned(t, "localhost")
	var cfg Config
	s, _ := start(t, cert, func(c *Config) {
		c.Listeners[0].Upstream = up.URL
		c.Listeners[0].NextProtos = []string{"h2", "http/1.1"}
		c.Listeners[0].HTTP3 = true
		c.MaxWebSocketsPerConnection = bound
		cfg = *c
	})
	addr := s.Addrs()[0]
	for _, proto := range []string{"h2", "h3"} {
		t.Run(proto, func(t *testing.T) {
			refused := func() float64 {
				return wsSample(t, s, "tlsfarm_websockets_refused_total", "proto", proto, "reason", "connection_limit")
			}
			c := newWSClient(t, proto, addr, cert)
			var wss []*wsConn
			for range bound {
				ws := c.open("/echo")
				<-up.requests
				must(t, ws.status == http.StatusOK, "status %d", ws.status)
				wss = append(wss, ws)
			}
			t0 := time.Now()
			ws := c.open("/echo")
			must(t, ws.status == http.StatusTooManyRequests, "WebSocket %d on one connection: status %d", bound+1, ws.status)
			must(t, time.Since(t0) < 3*time.Second, "answered after %v", time.Since(t0))
			must(t, refused() == 1, "refused for the bound: %v", refused())
			select {
			case r := <-up.requests:
				t.Fatalf("a WebSocket past the bound reached the upstream: %s", r.path)
			case <-time.After(100 * time.Millisecond):
			}
			for _, ws := range wss {
				echo(t, ws, "still open")
			}

			// Another connection has its own bound.
			other := newWSClient(t, proto, addr, cert)
			ws = other.open("/echo")
			<-up.requests
			must(t, ws.status == http.StatusOK, "another connection: status %d", ws.status)
			closeWS(t, ws)

			// A slot freed is taken again.
			closeWS(t, wss[0])
			waitFor(t, func() bool { return wsSample(t, s, "tlsfarm_websockets_open", "proto", proto) == bound-1 }, "WebSocket still counted open")
			ws = c.open("/echo")
			<-up.requests
			must(t, ws.status == http.StatusOK, "after a close: status %d", ws.status)
			wss[0] = ws

			// A reload raises the bound.
			cfg.MaxWebSocketsPerConnection = bound + 1
			if err := s.Reload(cfg); err != nil {
				t.Fatal(err)
			}
			ws = c.open("/echo")
			<-up.requests
			must(t, ws.status == http.StatusOK, "bound reloaded to %d: status %d", bound+1, ws.status)
			ws = c.open("/echo")
			must(t, ws.status == http.StatusTooManyRequests, "past the reloaded bound: status %d", ws.status)
			must(t, refused() == 2, "refused for the bound: %v", refused())
			cfg.MaxWebSocketsPerConnection = bound
			if err := s.Reload(cfg); err != nil {
				t.Fatal(err)
			}
			c.close()
			waitFor(t, func() bool { return wsSample(t, s, "tlsfarm_websockets_open", "proto", proto) == 0 }, "WebSockets still counted open after their connection closed")
		})
	}
	noGoroutineIn(t, "serveWebSocket")
}

// TestWebSocketsListenerBound sets MaxConnections to 2 and opens
// WebSockets over one HTTP/2 connection and one HTTP/3 connection (each
// within MaxConnections and the per-connection bound): the listener holds
// at most 2 of them over HTTP/2 and HTTP/3 together, the next gets 503
// without reaching the upstream, and is counted.
func TestWebSocketsListenerBound(t *testing.T) {
	if !withXConnect(t) {
		return
	}
	up := newWSUpstream(t)
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) {
		c.Listeners[0].Upstream = up.URL
		c.Listeners[0].NextProtos = []string{"h2", "http/1.1"}
		c.Listeners[0].HTTP3 = true
		c.MaxConnections = 2
	})
	addr := s.Addrs()[0]
	h2c := newWSClient(t, "h2", addr, cert)
	for range 2 {
		ws := h2c.open("/echo")
		<-up.requests
		must(t, ws.status == http.StatusOK, "status %d", ws.status)
	}
	h3c := newWSClient(t, "h3", addr, cert)
	ws := h3c.open("/echo")
	must(t, ws.status == http.StatusServiceUnavailable, "third WebSocket of the listener: status %d", ws.status)
	n := wsSample(t, s, "tlsfarm_websockets_refused_total", "proto", "h3", "reason", "listener_limit")
	must(t, n == 1, "refused for the listener's bound: %v", n)
	select {
	case r := <-up.requests:
		t.Fatalf("a WebSocket past the bound reached the upstream: %s", r.path)
	case <-time.After(100 * time.Millisecond):
	}
	h2c.close()
	waitFor(t, func() bool { return wsSample(t, s, "tlsfarm_websockets_open", "proto", "h2") == 0 }, "HTTP/2 WebSockets still counted open")
	ws = h3c.open("/echo")
	<-up.requests
	must(t, ws.status == http.StatusOK, "after the others closed: status %d", ws.status)
}

// wsSample returns the value of one of s's samples, failing if it has none.
func wsSample(t *testing.T, s *Server, name string, labels ...string) float64 {
	t.Helper()
	v, ok := metric.Value(s.Metrics(), name, labels...)
	if !ok {
		t.Fatalf("no sample %s %v in %v", name, labels, s.Metrics())
	}
	return v
}

// echo sends msg on ws and checks that the echo upstream sends it back.
func echo(t *testing.T, ws *wsConn, msg string) {
	t.Helper()
	if err := writeWSFrame(ws.w, 1, []byte(msg), true); err != nil {
		t.Fatal(err)
	}
	op, got, err := readWSFrame(ws.r)
	must(t, err == nil && op == 1 && string(got) == msg, "echo: opcode %d, %q, %v", op, got, err)
}

// closeWS closes ws as a WebSocket client does: it sends a close frame,
// reads the upstream's, waits for the end of the stream, and ends its own
// (over HTTP/1.1, the proxy passes on the upstream's end and waits for the
// client's, as for TCP).
func closeWS(t *testing.T, ws *wsConn) {
	t.Helper()
	writeWSFrame(ws.w, 8, nil, true)
	op, _, err := readWSFrame(ws.r)
	must(t, err == nil && op == 8, "close: opcode %d, %v", op, err)
	ws.r.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = io.Copy(io.Discard, ws.r)
	must(t, err == nil, "after close: %v", err)
	ws.closeWrite()
}

// A wsClient opens WebSockets with extended CONNECT, all on one HTTP/2 or
// HTTP/3 connection.
type wsClient struct {
	t     *testing.T
	proto string
	addr  string
	h2    http.RoundTripper
	h3    *http3.ClientConn
	close func() // closes the connection
}

func newWSClient(t *testing.T, proto, addr string, cert *tls.Certificate) *wsClient {
	c := &wsClient{t: t, proto: proto, addr: addr}
	if proto == "h2" {
		cfg := client("localhost", cert)
		cfg.NextProtos = []string{"h2"}
		// One connection: a second dial fails the test.
		var conn net.Conn
		dial := func(ctx context.Context, network, a string, cfg *tls.Config) (net.Conn, error) {
			if conn != nil {
				t.Errorf("the HTTP/2 client dialed a second connection")
			}
			var err error
			conn, err = (&tls.Dialer{Config: cfg}).DialContext(ctx, network, a)
			return conn, err
		}
		//lint:ignore SA1019 the only Go client for extended CONNECT over HTTP/2 (see extendedConnectH2)
		c.h2 = http.RoundTripper(&http2.Transport{TLSClientConfig: cfg, DialTLSContext: dial})
		c.close = func() {
			if conn != nil {
				conn.Close()
			}
		}
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		cfg := client("localhost", cert)
		cfg.NextProtos = []string{http3.NextProtoH3}
		qc, err := quic.DialAddr(ctx, addr, cfg, &quic.Config{KeepAlivePeriod: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		c.close = func() { qc.CloseWithError(0, "") }
		c.h3 = (&http3.Transport{}).NewClientConn(qc)
		select {
		case <-c.h3.ReceivedSettings():
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
	}
	t.Cleanup(c.close)
	return c
}

// open opens a WebSocket to path on c's connection; it is closed when the
// test ends.
func (c *wsClient) open(path string) *wsConn {
	c.t.Helper()
	u, _ := url.Parse("https://localhost:" + port(c.addr) + path)
	header := wsHeader.Clone()
	var ws *wsConn
	if c.proto == "h2" {
		pr, pw := io.Pipe()
		req, _ := http.NewRequest(http.MethodConnect, u.String(), pr)
		req.URL.Host = c.addr
		req.Header = header
		req.Header.Set(":protocol", "websocket")
		resp, err := c.h2.RoundTrip(req)
		if err != nil {
			c.t.Fatal(err)
		}
		ws = &wsConn{status: resp.StatusCode, header: resp.Header, r: &deadlineReader{r: resp.Body}, w: &closers{pw, resp.Body}, closeWrite: func() { pw.Close() }}
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		str, err := c.h3.OpenRequestStream(ctx)
		if err != nil {
			c.t.Fatal(err)
		}
		req := &http.Request{Method: http.MethodConnect, Proto: "websocket", Host: u.Host, URL: u, Header: header}
		if err := str.SendRequestHeader(req); err != nil {
			c.t.Fatal(err)
		}
		resp, err := str.ReadResponse()
		if err != nil {
			c.t.Fatal(err)
		}
		ws = &wsConn{status: resp.StatusCode, header: resp.Header, r: str, w: &closers{str, closerFunc(func() { str.CancelRead(0) })}, closeWrite: func() { str.Close() }}
	}
	c.t.Cleanup(func() { ws.w.(io.Closer).Close() })
	return ws
}

// TestUpgradeToAnotherProtocolIsClosed has an upstream answer an HTTP/1.1
// WebSocket upgrade by switching to another protocol (or one that only
// Unicode case folding makes "websocket", which ReverseProxy refuses as
// not printable ASCII): the client must get 502, counted as an upstream
// error, and the upstream's connection must be closed at once
// (ReverseProxy refuses such a switch but leaves the upstream's
// connection open), not held until the idle timeout.
func TestUpgradeToAnotherProtocolIsClosed(t *testing.T) {
	for _, to := range []string{"something-else", "websoc\u212Aet"} {
		t.Run(to, func(t *testing.T) {
			ended := make(chan struct{})
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				c, brw, err := http.NewResponseController(w).Hijack()
				if err != nil {
					return
				}
				defer close(ended)
				defer c.Close()
				c.SetDeadline(time.Now().Add(15 * time.Second))
				io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+to+"\r\n\r\n")
				io.Copy(io.Discard, brw)
			}))
			defer up.Close()
			cert := mustSelfSigned(t, "localhost")
			s := startWSProxy(t, cert, up.URL, time.Minute)
			ws := dialWS(t, "h1", s.Addrs()[0], cert, "/", wsHeader)
			must(t, ws.status == http.StatusBadGateway, "status %d", ws.status)
			select {
			case <-ended:
			case <-time.After(5 * time.Second):
				t.Fatal("the upstream's connection still open after the 502")
			}
			n := wsSample(t, s, "tlsfarm_websockets_refused_total", "proto", "h1", "reason", "upstream_error")
			must(t, n == 1, "upstream errors: %v", n)
			must(t, wsSample(t, s, "tlsfarm_websockets_total", "proto", "h1") == 0, "counted as opened")
			must(t, wsSample(t, s, "tlsfarm_websockets_open", "proto", "h1") == 0, "counted as open")
		})
	}
}
