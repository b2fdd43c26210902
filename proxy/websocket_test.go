package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"golang.org/x/net/http2"
)

// xconnectEnv is what the environment must hold, at the start of the
// process, for net/http's HTTP/2 server to accept extended CONNECT.
const xconnectEnv = "http2xconnect=1"

// TestWebSocketOverExtendedConnect opens WebSockets with extended CONNECT
// (RFC 8441 over HTTP/2, RFC 9220 over HTTP/3) through the reverse proxy
// to an HTTP/1.1 WebSocket upstream, and checks, on each protocol: that
// messages go both ways; that the upstream gets an HTTP/1.1 Upgrade with
// the forwarding headers the proxy sets and none that the client forged,
// and the client a 200 without the upstream's hop-by-hop headers; that an
// upstream refusing the WebSocket is passed on, and one answering 2xx
// without switching is a 502 (a 2xx would open the tunnel); and that the
// idle timeout ends a WebSocket on which nothing moves, or whose client
// stops reading, on both sides. net/http reads GODEBUG=http2xconnect=1
// only from the environment at its start: the test runs itself again
// with it.
func TestWebSocketOverExtendedConnect(t *testing.T) {
	if !withXConnect(t) {
		return
	}
	const idle = 400 * time.Millisecond
	up := newWSUpstream(t)
	cert := mustSelfSigned(t, "localhost")
	s := startWSProxy(t, cert, up.URL+"/base", idle)
	for _, proto := range []string{"h2", "h3"} {
		t.Run(proto+" echo", func(t *testing.T) {
			h := http.Header{
				"Sec-Websocket-Version":  {"13"},
				"Sec-Websocket-Protocol": {"chat"},
				"X-Forwarded-For":        {"10.6.6.6"},
				"X-Forwarded-Port":       {"1"},
				"Sec-Websocket-Key":      {"Zm9yZ2VkIGJ5IGNsaWVudA=="},
			}
			ws := dialWS(t, proto, s.Addrs()[0], cert, "/echo?x=1", h)
			must(t, ws.status == http.StatusOK, "status %d", ws.status)
			must(t, ws.header.Get("Sec-Websocket-Protocol") == "chat", "response headers %v", ws.header)
			must(t, ws.header.Get("X-End") == "1", "response headers %v", ws.header)
			for _, k := range []string{"Sec-Websocket-Accept", "Upgrade", "Connection", "X-Hop"} {
				must(t, ws.header.Get(k) == "", "response header %s: %q", k, ws.header.Get(k))
			}
			got := <-up.requests
			must(t, got.path == "/base/echo" && got.query == "x=1", "upstream request %s?%s", got.path, got.query)
			must(t, got.proto == "HTTP/1.1", "upstream spoke %s", got.proto)
			for k, want := range map[string]string{
				"X-Forwarded-For":        "127.0.0.1",
				"X-Forwarded-Proto":      "https",
				"X-Forwarded-Host":       strings.Replace(s.Addrs()[0], "127.0.0.1", "localhost", 1),
				"X-Forwarded-Port":       "",
				ResumedHeader:            "0",
				"Sec-Websocket-Protocol": "chat",
				"Sec-Websocket-Version":  "13",
			} {
				must(t, got.header.Get(k) == want, "upstream got %s %q, want %q", k, got.header.Get(k), want)
			}
			must(t, got.header.Get("Sec-Websocket-Key") != "Zm9yZ2VkIGJ5IGNsaWVudA==", "the client's Sec-WebSocket-Key reached the upstream")
			for i, msg := range []string{"one", strings.Repeat("two", 30000), "three"} {
				if err := writeWSFrame(ws.w, 1, []byte(msg), true); err != nil {
					t.Fatalf("message %d: %v", i, err)
				}
				op, echo, err := readWSFrame(ws.r)
				must(t, err == nil && op == 1 && string(echo) == msg, "message %d: opcode %d, %d bytes, %v", i, op, len(echo), err)
			}
			writeWSFrame(ws.w, 8, nil, true) // close
			op, _, err := readWSFrame(ws.r)
			must(t, err == nil && op == 8, "close: opcode %d, %v", op, err)
			_, err = io.Copy(io.Discard, ws.r)
			must(t, err == nil, "after close: %v", err)
			select {
			case <-got.ended:
			case <-time.After(2 * time.Second):
				t.Fatal("upstream's connection still open")
			}
		})
		for _, tt := range []struct {
			path   string
			status int
		}{
			{"/refuse", http.StatusForbidden},
			{"/ok", http.StatusBadGateway},
		} {
			t.Run(proto+" "+tt.path, func(t *testing.T) {
				ws := dialWS(t, proto, s.Addrs()[0], cert, tt.path, http.Header{"Sec-Websocket-Version": {"13"}})
				<-up.requests
				must(t, ws.status == tt.status, "status %d, want %d", ws.status, tt.status)
				ws.r.SetReadDeadline(time.Now().Add(5 * time.Second))
				_, err := io.Copy(io.Discard, ws.r)
				must(t, err == nil, "refused WebSocket's body: %v", err)
			})
		}
		for _, path := range []string{"/silent", "/flood"} {
			t.Run(proto+" idle "+path, func(t *testing.T) {
				ws := dialWS(t, proto, s.Addrs()[0], cert, path, http.Header{"Sec-Websocket-Version": {"13"}})
				got := <-up.requests
				must(t, ws.status == http.StatusOK, "status %d", ws.status)
				t0 := time.Now()
				if path == "/flood" {
					defer func() {
						took := time.Since(t0)
						must(t, took > idle/2, "flood ended after %v, before the idle timeout %v", took, idle)
					}()
					// The client reads nothing: the buffers on the
					// way fill, then nothing moves.
					select {
					case <-got.ended:
					case <-time.After(8 * time.Second):
						t.Fatal("upstream still writing to a client that does not read")
					}
				} else {
					ws.r.SetReadDeadline(time.Now().Add(8 * time.Second))
					io.Copy(io.Discard, ws.r)
					took := time.Since(t0)
					must(t, took < 4*time.Second, "WebSocket idle for %v (idle timeout %v) before the client saw its end", took, idle)
					select {
					case <-got.ended:
					case <-time.After(5 * time.Second):
						t.Fatal("upstream's connection still open")
					}
				}
			})
		}
	}
	noGoroutineIn(t, "serveWebSocket")
	// The 2xx answers that did not switch.
	must(t, s.Stats().UpstreamErrors == 2, "stats %+v", s.Stats())
	for _, proto := range []string{"h2", "h3"} {
		// echo, silent and flood opened; all ended, cut or not.
		open, total := wsSample(t, s, "tlsfarm_websockets_open", "proto", proto), wsSample(t, s, "tlsfarm_websockets_total", "proto", proto)
		must(t, open == 0 && total == 3, "%s WebSockets: open %v, total %v", proto, open, total)
	}
}

// TestWebSocketShutdownWaitsForIt opens a WebSocket over HTTP/2 and over
// HTTP/3, then shuts the server down: as for a WebSocket over HTTP/1.1, the
// shutdown must let it go on until it ends (here the client closes it),
// and then return; or, if the shutdown's deadline comes first, end it on
// both sides and return. The WebSocket's connection counts as open
// throughout.
func TestWebSocketShutdownWaitsForIt(t *testing.T) {
	if !withXConnect(t) {
		return
	}
	up := newWSUpstream(t)
	for _, proto := range []string{"h2", "h3"} {
		t.Run(proto, func(t *testing.T) {
			cert := mustSelfSigned(t, "localhost")
			s := startWSProxy(t, cert, up.URL, 0)
			ws := dialWS(t, proto, s.Addrs()[0], cert, "/echo", http.Header{"Sec-Websocket-Version": {"13"}})
			got := <-up.requests
			must(t, ws.status == http.StatusOK, "status %d", ws.status)
			open := func() int {
				if proto == "h3" {
					return s.QUICStats().Open
				}
				return s.Stats().Open
			}
			must(t, open() == 1, "%s connections open: %d", proto, open())
			shut := shutdownInBackground(t, s)
			for range 3 {
				time.Sleep(200 * time.Millisecond)
				writeWSFrame(ws.w, 1, []byte("still here"), true)
				op, echo, err := readWSFrame(ws.r)
				must(t, err == nil && op == 1 && string(echo) == "still here", "during shutdown: opcode %d, %q, %v", op, echo, err)
			}
			select {
			case err := <-shut:
				t.Fatalf("Shutdown returned (%v) with a WebSocket open", err)
			default:
			}
			must(t, open() == 1, "%s connections open during shutdown: %d", proto, open())
			writeWSFrame(ws.w, 8, nil, true)
			readWSFrame(ws.r)
			select {
			case err := <-shut:
				must(t, err == nil, "Shutdown: %v", err)
			case <-time.After(4 * time.Second):
				t.Fatal("Shutdown still waiting after the WebSocket ended")
			}
			select {
			case <-got.ended:
			case <-time.After(2 * time.Second):
				t.Fatal("upstream's connection still open")
			}
			waitFor(t, func() bool { return open() == 0 }, "%s connections open after shutdown: %d", proto, open())
		})
		t.Run(proto+" deadline", func(t *testing.T) {
			cert := mustSelfSigned(t, "localhost")
			s := startWSProxy(t, cert, up.URL, 0)
			ws := dialWS(t, proto, s.Addrs()[0], cert, "/echo", http.Header{"Sec-Websocket-Version": {"13"}})
			got := <-up.requests
			must(t, ws.status == http.StatusOK, "status %d", ws.status)
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			t0 := time.Now()
			err := s.Shutdown(ctx)
			must(t, errors.Is(err, context.DeadlineExceeded) && time.Since(t0) < 3*time.Second, "Shutdown: %v after %v", err, time.Since(t0))
			select {
			case <-got.ended:
			case <-time.After(3 * time.Second):
				t.Fatal("upstream's connection still open after the shutdown's deadline")
			}
			ws.r.SetReadDeadline(time.Now().Add(3 * time.Second))
			_, err = io.Copy(io.Discard, ws.r)
			must(t, err != nil && !errors.Is(err, os.ErrDeadlineExceeded), "client's side after the shutdown's deadline: %v", err)
			noGoroutineIn(t, "serveWebSocket")
		})
	}
}

// TestWebSocketClientEndsItsStream opens a WebSocket over HTTP/2 and over
// HTTP/3 and ends the client's stream (END_STREAM, as a TCP FIN): the
// upstream must see the end of its input (here it then closes), long
// before the idle timeout, and the client the end of the WebSocket.
func TestWebSocketClientEndsItsStream(t *testing.T) {
	if !withXConnect(t) {
		return
	}
	up := newWSUpstream(t)
	cert := mustSelfSigned(t, "localhost")
	s := startWSProxy(t, cert, up.URL, time.Minute)
	for _, proto := range []string{"h2", "h3"} {
		t.Run(proto, func(t *testing.T) {
			ws := dialWS(t, proto, s.Addrs()[0], cert, "/echo", http.Header{"Sec-Websocket-Version": {"13"}})
			got := <-up.requests
			must(t, ws.status == http.StatusOK, "status %d", ws.status)
			writeWSFrame(ws.w, 1, []byte("last"), true)
			ws.closeWrite()
			op, echo, err := readWSFrame(ws.r)
			must(t, err == nil && op == 1 && string(echo) == "last", "echo after the client's end: opcode %d, %q, %v", op, echo, err)
			select {
			case <-got.ended:
			case <-time.After(5 * time.Second):
				t.Fatal("the upstream did not see the client's end of stream")
			}
			ws.r.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = io.Copy(io.Discard, ws.r)
			must(t, err == nil, "client's side after the upstream closed: %v", err)
		})
	}
	noGoroutineIn(t, "serveWebSocket")
}

// TestHTTP2ExtendedConnectNeedsGODEBUG checks the default: without
// GODEBUG=http2xconnect=1, net/http's HTTP/2 server does not offer extended
// CONNECT, so a client makes no WebSocket over HTTP/2 (browsers then use
// HTTP/1.1), and the request never reaches the upstream.
func TestHTTP2ExtendedConnectNeedsGODEBUG(t *testing.T) {
	if strings.Contains(os.Getenv("GODEBUG"), xconnectEnv) {
		t.Skip("GODEBUG has " + xconnectEnv)
	}
	up := newWSUpstream(t)
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) {
		c.Listeners[0].Upstream = up.URL
		c.Listeners[0].NextProtos = []string{"h2", "http/1.1"}
	})
	_, err := extendedConnectH2(cert, s.Addrs()[0], "/echo", http.Header{"Sec-Websocket-Version": {"13"}})
	must(t, err != nil && strings.Contains(err.Error(), "extended connect not supported"), "extended CONNECT over HTTP/2 without %s: %v", xconnectEnv, err)
	must(t, s.Stats().UpstreamHTTPRequests == 0, "stats %+v", s.Stats())
}

// TestConnectIsRefused sends an ordinary CONNECT (no :protocol) through
// the reverse proxy over HTTP/1.1, HTTP/2 and HTTP/3, and an extended
// CONNECT for a protocol other than WebSocket, or to the built-in
// upstream: each must be answered at once with a clear error status, and
// must not reach the upstream (which could be a forward proxy).
func TestConnectIsRefused(t *testing.T) {
	up := newWSUpstream(t)
	for _, upstream := range []string{"http", "builtin"} {
		cert := mustSelfSigned(t, "localhost")
		s, _ := start(t, cert, func(c *Config) {
			c.Listeners[0].Upstream = map[string]string{"http": up.URL, "builtin": "builtin"}[upstream]
			c.Listeners[0].NextProtos = []string{"h2", "http/1.1"}
			c.Listeners[0].HTTP3 = true
		})
		addr := s.Addrs()[0]
		type connectCase struct {
			name   string
			do     func() (int, error)
			status int
		}
		cases := []connectCase{
			{"http/1.1", func() (int, error) { return connectH1(cert, addr) }, http.StatusMethodNotAllowed},
			{"h2", func() (int, error) { return connectH2(cert, addr) }, http.StatusMethodNotAllowed},
			{"h3", func() (int, error) { return connectH3(cert, addr, "") }, http.StatusMethodNotAllowed},
			{"h3 connect-udp", func() (int, error) { return connectH3(cert, addr, "connect-udp") }, http.StatusNotImplemented},
		}
		if upstream == "builtin" { // an http:// upstream serves it: see TestWebSocketOverExtendedConnect
			cases = append(cases, connectCase{"h3 websocket", func() (int, error) { return connectH3(cert, addr, "websocket") }, http.StatusNotImplemented})
		}
		for _, tt := range cases {
			t.Run(upstream+" "+tt.name, func(t *testing.T) {
				t0 := time.Now()
				status, err := tt.do()
				must(t, err == nil && status == tt.status, "status %d, want %d: %v", status, tt.status, err)
				must(t, time.Since(t0) < 3*time.Second, "answered after %v", time.Since(t0))
			})
		}
		must(t, s.Stats().UpstreamHTTPRequests == 0 && s.Stats().UpstreamErrors == 0, "stats %+v", s.Stats())
	}
	noGoroutineIn(t, "serveConnect")
	select {
	case r := <-up.requests:
		t.Fatalf("a CONNECT reached the upstream: %s %s", r.method, r.path)
	default:
	}
}

// connectH1 sends "CONNECT example.com:443" over HTTP/1.1.
func connectH1(cert *tls.Certificate, addr string) (int, error) {
	c, err := tls.Dial("tcp", addr, client("localhost", cert))
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// h2Transport returns an HTTP/2-only transport trusting cert.
func h2Transport(cert *tls.Certificate) *http.Transport {
	cfg := client("localhost", cert)
	cfg.NextProtos = []string{"h2"}
	tr := &http.Transport{TLSClientConfig: cfg, Protocols: new(http.Protocols)}
	tr.Protocols.SetHTTP2(true)
	return tr
}

// connectH2 sends an ordinary CONNECT for example.com:443 over HTTP/2.
func connectH2(cert *tls.Certificate, addr string) (int, error) {
	tr := h2Transport(cert)
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pr, pw := io.Pipe()
	defer pw.Close()
	req, _ := http.NewRequestWithContext(ctx, http.MethodConnect, "https://"+addr, pr)
	req.Host = "example.com:443"
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, err
}

// connectH3 sends a CONNECT over HTTP/3: an ordinary one for
// example.com:443 if protocol is empty, else an extended one.
func connectH3(cert *tls.Certificate, addr, protocol string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	str, closeConn, err := openH3Stream(ctx, cert, addr)
	if err != nil {
		return 0, err
	}
	defer closeConn()
	req := &http.Request{Method: http.MethodConnect, Host: "example.com:443", URL: &url.URL{Host: "example.com:443"}, Header: http.Header{}}
	if protocol != "" {
		req.Proto, req.Host = protocol, "localhost"
		req.URL = &url.URL{Scheme: "https", Host: "localhost", Path: "/"}
	}
	if err := str.SendRequestHeader(req); err != nil {
		return 0, err
	}
	resp, err := str.ReadResponse()
	if err != nil {
		return 0, err
	}
	str.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, err
}

// openH3Stream opens an HTTP/3 connection to addr and a request stream on
// it, once the server's settings have come and offer extended CONNECT.
func openH3Stream(ctx context.Context, cert *tls.Certificate, addr string) (*http3.RequestStream, func(), error) {
	cfg := client("localhost", cert)
	cfg.NextProtos = []string{http3.NextProtoH3}
	qc, err := quic.DialAddr(ctx, addr, cfg, &quic.Config{KeepAlivePeriod: 100 * time.Millisecond})
	if err != nil {
		return nil, nil, err
	}
	closeConn := func() { qc.CloseWithError(0, "") }
	cc := (&http3.Transport{}).NewClientConn(qc)
	select {
	case <-cc.ReceivedSettings():
	case <-ctx.Done():
		closeConn()
		return nil, nil, ctx.Err()
	}
	if !cc.Settings().EnableExtendedConnect {
		closeConn()
		return nil, nil, errors.New("the server does not offer extended CONNECT over HTTP/3")
	}
	str, err := cc.OpenRequestStream(ctx)
	if err != nil {
		closeConn()
		return nil, nil, err
	}
	return str, closeConn, nil
}

// A wsConn is the client's side of a WebSocket opened with extended
// CONNECT.
type wsConn struct {
	status int
	header http.Header
	r      interface {
		io.Reader
		SetReadDeadline(time.Time) error
	}
	w          io.Writer
	closeWrite func() // ends the client's stream (END_STREAM, FIN)
}

// dialWS opens a WebSocket to path over proto (h2 or h3 with extended
// CONNECT, h1 with an HTTP/1.1 Upgrade), sending header. It is closed when
// the test ends.
func dialWS(t *testing.T, proto, addr string, cert *tls.Certificate, path string, header http.Header) *wsConn {
	t.Helper()
	var ws *wsConn
	var err error
	switch proto {
	case "h1":
		ws, err = upgradeH1(cert, addr, path, header)
	case "h2":
		ws, err = extendedConnectH2(cert, addr, path, header)
	default:
		ws, err = extendedConnectH3(t, cert, addr, path, header)
	}
	if err != nil {
		t.Fatalf("%s extended CONNECT: %v", proto, err)
	}
	if c, ok := ws.w.(io.Closer); ok {
		t.Cleanup(func() { c.Close() })
	}
	return ws
}

// upgradeH1 opens a WebSocket over HTTP/1.1 (GET with Upgrade: websocket)
// on a connection of its own.
func upgradeH1(cert *tls.Certificate, addr, path string, header http.Header) (*wsConn, error) {
	cfg := client("localhost", cert)
	cfg.NextProtos = []string{"http/1.1"}
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	req, _ := http.NewRequest(http.MethodGet, "https://localhost:"+port(addr)+path, nil)
	req.Header = header.Clone()
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := req.Write(c); err != nil {
		c.Close()
		return nil, err
	}
	c.SetWriteDeadline(time.Time{})
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		c.Close()
		return nil, err
	}
	c.SetReadDeadline(time.Time{})
	var r io.Reader = br
	if resp.StatusCode != http.StatusSwitchingProtocols {
		r = resp.Body
	}
	return &wsConn{status: resp.StatusCode, header: resp.Header, r: &connReader{r, c}, w: c, closeWrite: func() { c.CloseWrite() }}, nil
}

// A connReader reads r, with the read deadline of c.
type connReader struct {
	io.Reader
	c net.Conn
}

func (r *connReader) SetReadDeadline(t time.Time) error { return r.c.SetReadDeadline(t) }

type roundTripCloser interface {
	http.RoundTripper
	CloseIdleConnections()
}

// extendedConnectH2 opens a WebSocket with golang.org/x/net/http2's
// client: net/http's Transport and ClientConn (Go 1.26) refuse the
// :protocol pseudo-header as an invalid header field name.
func extendedConnectH2(cert *tls.Certificate, addr, path string, header http.Header) (*wsConn, error) {
	cfg := client("localhost", cert)
	cfg.NextProtos = []string{"h2"}
	//lint:ignore SA1019 the only Go client for extended CONNECT over HTTP/2 (see above)
	tr := roundTripCloser(&http2.Transport{TLSClientConfig: cfg})
	pr, pw := io.Pipe()
	req, _ := http.NewRequest(http.MethodConnect, "https://localhost:"+port(addr)+path, pr)
	req.URL.Host = addr
	req.Host = "localhost:" + port(addr)
	req.Header = header.Clone()
	req.Header.Set(":protocol", "websocket")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		pw.Close()
		tr.CloseIdleConnections()
		return nil, err
	}
	return &wsConn{status: resp.StatusCode, header: resp.Header, r: &deadlineReader{r: resp.Body}, w: &closers{pw, resp.Body, closerFunc(tr.CloseIdleConnections)}, closeWrite: func() { pw.Close() }}, nil
}

// extendedConnectH3 opens a WebSocket with quic-go's HTTP/3 client.
func extendedConnectH3(t *testing.T, cert *tls.Certificate, addr, path string, header http.Header) (*wsConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	str, closeConn, err := openH3Stream(ctx, cert, addr)
	if err != nil {
		return nil, err
	}
	u, _ := url.Parse("https://localhost:" + port(addr) + path)
	req := &http.Request{Method: http.MethodConnect, Proto: "websocket", Host: u.Host, URL: u, Header: header.Clone()}
	if err := str.SendRequestHeader(req); err != nil {
		closeConn()
		return nil, err
	}
	resp, err := str.ReadResponse()
	if err != nil {
		closeConn()
		return nil, err
	}
	return &wsConn{status: resp.StatusCode, header: resp.Header, r: str, w: &closers{str, closerFunc(closeConn)}, closeWrite: func() { str.Close() }}, nil
}

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

type closerFunc func()

func (f closerFunc) Close() error { f(); return nil }

// closers writes to the first of its closers and closes them all.
type closers []io.Closer

func (c closers) Write(p []byte) (int, error) { return c[0].(io.Writer).Write(p) }

func (c closers) Close() error {
	for _, x := range c {
		x.Close()
	}
	return nil
}

// deadlineReader gives a response body a read deadline: the body is
// closed when it passes.
type deadlineReader struct {
	r     io.ReadCloser
	mu    sync.Mutex
	timer *time.Timer
}

func (d *deadlineReader) Read(p []byte) (int, error) { return d.r.Read(p) }

func (d *deadlineReader) SetReadDeadline(t time.Time) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil {
		d.timer.Stop()
	}
	d.timer = time.AfterFunc(time.Until(t), func() { d.r.Close() })
	return nil
}

// A wsRequest is what the WebSocket upstream saw of a request.
type wsRequest struct {
	method, path, query, proto string
	header                     http.Header
	ended                      chan struct{} // closed when a switched connection ends
}

// A wsUpstream is a WebSocket upstream over HTTP/1.1, standard library
// only. By path: /echo echoes each message and answers a close; /silent
// says nothing; /flood sends without end; /refuse answers 403, /ok 200
// without switching; /cl echoes as /echo, its 101 declaring a
// Content-Length of 0 (as some servers do); /hang never answers, and
// reports its connection's end. Each connection it switched ends within
// 15 s.
type wsUpstream struct {
	*httptest.Server
	requests chan wsRequest
}

func newWSUpstream(t *testing.T) *wsUpstream {
	u := &wsUpstream{requests: make(chan wsRequest, 16)}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ended := make(chan struct{})
		u.requests <- wsRequest{r.Method, r.URL.Path, r.URL.RawQuery, r.Proto, r.Header.Clone(), ended}
		switch {
		case strings.HasSuffix(r.URL.Path, "/refuse"):
			http.Error(w, "no", http.StatusForbidden)
			return
		case strings.HasSuffix(r.URL.Path, "/ok"):
			io.WriteString(w, "not a WebSocket")
			return
		}
		if strings.HasSuffix(r.URL.Path, "/hang") {
			c, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer close(ended)
			defer c.Close()
			c.SetDeadline(time.Now().Add(15 * time.Second))
			io.Copy(io.Discard, brw)
			return
		}
		key := r.Header.Get("Sec-Websocket-Key")
		if r.Method != http.MethodGet || !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") || key == "" {
			http.Error(w, "not a WebSocket handshake", http.StatusBadRequest)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer close(ended)
		defer c.Close()
		c.SetDeadline(time.Now().Add(15 * time.Second))
		resp := "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade, X-Hop\r\nUpgrade: websocket\r\nX-Hop: 1\r\nX-End: 1\r\nSec-WebSocket-Accept: " + wsAccept(key) + "\r\n"
		if p := r.Header.Get("Sec-Websocket-Protocol"); p != "" {
			resp += "Sec-WebSocket-Protocol: " + p + "\r\n"
		}
		if strings.HasSuffix(r.URL.Path, "/cl") {
			resp += "Content-Length: 0\r\n"
		}
		if _, err := io.WriteString(c, resp+"\r\n"); err != nil {
			return
		}
		switch {
		case strings.HasSuffix(r.URL.Path, "/echo"), strings.HasSuffix(r.URL.Path, "/cl"):
			for {
				op, msg, err := readWSFrame(brw)
				if err != nil {
					return
				}
				if writeWSFrame(c, op, msg, false) != nil || op == 8 {
					return
				}
			}
		case strings.HasSuffix(r.URL.Path, "/flood"):
			msg := make([]byte, 32<<10)
			for writeWSFrame(c, 2, msg, false) == nil {
			}
		default:
			io.Copy(io.Discard, brw)
		}
	}))
	t.Cleanup(u.Close)
	return u
}

// writeWSFrame writes one final WebSocket frame, masked as a client's.
func writeWSFrame(w io.Writer, op byte, payload []byte, mask bool) error {
	b := []byte{0x80 | op, 0}
	switch n := len(payload); {
	case n < 126:
		b[1] = byte(n)
	case n < 1<<16:
		b[1] = 126
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b[1] = 127
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	if mask {
		b[1] |= 0x80
		key := [4]byte{1, 2, 3, 4}
		b = append(b, key[:]...)
		for i, c := range payload {
			b = append(b, c^key[i%4])
		}
	} else {
		b = append(b, payload...)
	}
	_, err := w.Write(b)
	return err
}

// readWSFrame reads one WebSocket frame and returns its opcode and
// unmasked payload.
func readWSFrame(r io.Reader) (byte, []byte, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	if n > 1<<20 {
		return 0, nil, errors.New("frame too large")
	}
	var key [4]byte
	if h[1]&0x80 != 0 {
		if _, err := io.ReadFull(r, key[:]); err != nil {
			return 0, nil, err
		}
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return 0, nil, err
	}
	if h[1]&0x80 != 0 {
		for i := range p {
			p[i] ^= key[i%4]
		}
	}
	return h[0] & 0x0f, p, nil
}

// withXConnect reports whether this process serves WebSockets over HTTP/2
// (GODEBUG=http2xconnect=1, which net/http reads only at its start). If
// not, it runs the current test again in a process that does, and the
// caller returns.
func withXConnect(t *testing.T) bool {
	t.Helper()
	if strings.Contains(os.Getenv("GODEBUG"), xconnectEnv) {
		return true
	}
	rerunWith(t, "GODEBUG="+strings.TrimPrefix(os.Getenv("GODEBUG")+","+xconnectEnv, ","))
	return false
}

// startWSProxy starts a server with one listener over TCP (h2 and
// HTTP/1.1) and HTTP/3 whose upstream is upstream, with idle as its idle
// timeout (0: the default).
func startWSProxy(t *testing.T, cert *tls.Certificate, upstream string, idle time.Duration) *Server {
	t.Helper()
	s, _ := start(t, cert, func(c *Config) {
		c.Listeners[0].Upstream = upstream
		c.Listeners[0].NextProtos = []string{"h2", "http/1.1"}
		c.Listeners[0].HTTP3 = true
		c.IdleTimeout = idle
	})
	return s
}

// rerunWith runs the current test again in a new process of the test
// binary with env added to its environment, and fails if it fails.
func rerunWith(t *testing.T, env string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), env)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("%s (rerun with %s): %v\n%s", t.Name(), env, err, out)
	}
	for line := range strings.Lines(string(out)) {
		if strings.Contains(line, "--- ") {
			t.Logf("rerun with %s: %s", env, strings.TrimSpace(line))
		}
	}
}

// noGoroutineIn waits until no goroutine runs a function whose name holds
// fn.
func noGoroutineIn(t *testing.T, fn string) {
	t.Helper()
	var stacks []byte
	waitFor(t, func() bool {
		stacks = make([]byte, 1<<20)
		stacks = stacks[:runtime.Stack(stacks, true)]
		return !strings.Contains(string(stacks), fn)
	}, "goroutines left in %s", fn)
}
