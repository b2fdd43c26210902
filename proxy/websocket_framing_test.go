package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestWebSocketUpstreamContentLength opens WebSockets over HTTP/2 and
// HTTP/3 to an upstream whose 101 declares "Content-Length: 0", as some
// servers do: a 2xx answer to CONNECT carries no Content-Length (RFC 9110
// §9.3.6), and passing it on tells the client's HTTP/3 or HTTP/2 stack the
// stream holds no bytes, so the first message from the upstream broke the
// WebSocket (quic-go refuses the write; Go's HTTP/2 client reports more
// data than declared).
func TestWebSocketUpstreamContentLength(t *testing.T) {
	if !withXConnect(t) {
		return
	}
	up := newWSUpstream(t)
	cert := mustSelfSigned(t, "localhost")
	s := startWSProxy(t, cert, up.URL, 5*time.Second)
	for _, proto := range []string{"h2", "h3"} {
		t.Run(proto, func(t *testing.T) {
			ws := dialWS(t, proto, s.Addrs()[0], cert, "/cl", http.Header{"Sec-Websocket-Version": {"13"}})
			<-up.requests
			must(t, ws.status == http.StatusOK, "status %d", ws.status)
			must(t, ws.header.Get("Content-Length") == "", "the client's 200 declares Content-Length %q", ws.header.Get("Content-Length"))
			ws.r.SetReadDeadline(time.Now().Add(5 * time.Second))
			for i, msg := range []string{"one", strings.Repeat("two", 30000)} {
				if err := writeWSFrame(ws.w, 1, []byte(msg), true); err != nil {
					t.Fatalf("message %d: %v", i, err)
				}
				op, echo, err := readWSFrame(ws.r)
				must(t, err == nil && op == 1 && string(echo) == msg, "message %d: opcode %d, %d bytes, %v", i, op, len(echo), err)
			}
		})
	}
}

// TestHTTP2ProtocolWithoutConnect sends, over HTTP/2 with extended CONNECT
// on, a GET carrying a :protocol pseudo-header (RFC 8441 allows it on
// CONNECT only; net/http's server lets it through and keeps it as a
// ":protocol" header). It must be refused as the client's error (400),
// not passed to the reverse proxy, whose transport refuses the header
// name: that was a 502 counted in tlsfarm_upstream_errors_total and the
// "upstream requests failing" warning, which any client could raise.
func TestHTTP2ProtocolWithoutConnect(t *testing.T) {
	if !withXConnect(t) {
		return
	}
	up := newWSUpstream(t)
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) {
		c.Listeners[0].Upstream = up.URL
		c.Listeners[0].NextProtos = []string{"h2", "http/1.1"}
	})
	for _, method := range []string{http.MethodGet, http.MethodPost} {
		t.Run(method, func(t *testing.T) {
			status := rawH2Request(t, cert, s.Addrs()[0], [][2]string{
				{":method", method}, {":scheme", "https"}, {":authority", "localhost"}, {":path", "/echo"}, {":protocol", "websocket"},
			})
			must(t, status == http.StatusBadRequest, "status %d, want 400", status)
		})
	}
	st := s.Stats()
	must(t, st.UpstreamErrors == 0 && st.UpstreamHTTPRequests == 0, "stats %+v", st)
	select {
	case r := <-up.requests:
		t.Fatalf("the request reached the upstream: %s %s", r.method, r.path)
	default:
	}
}

// rawH2Request sends one request of the given header fields, in order,
// over a new HTTP/2 connection with END_STREAM, and returns the status of
// its answer.
func rawH2Request(t *testing.T, cert *tls.Certificate, addr string, fields [][2]string) int {
	t.Helper()
	cfg := client("localhost", cert)
	cfg.NextProtos = []string{"h2"}
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range fields {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	dec := hpack.NewDecoder(4096, nil)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading the answer: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.RSTStreamFrame:
			t.Fatalf("stream reset: %v", f.ErrCode)
		case *http2.GoAwayFrame:
			t.Fatalf("GOAWAY: %v", f.ErrCode)
		case *http2.HeadersFrame:
			hf, err := dec.DecodeFull(f.HeaderBlockFragment())
			if err != nil {
				t.Fatal(err)
			}
			for _, h := range hf {
				if h.Name == ":status" {
					n, _ := strconv.Atoi(h.Value)
					return n
				}
			}
			t.Fatalf("answer without :status: %v", hf)
		}
	}
}

// TestWebSocketClientLeavesBeforeUpstreamAnswers opens a WebSocket over
// HTTP/2 and HTTP/3 to an upstream that never answers its handshake, and
// has the client leave (closing its connection) before any answer: the
// upstream's connection must be closed at once, and nothing left running,
// with no upstream error counted.
func TestWebSocketClientLeavesBeforeUpstreamAnswers(t *testing.T) {
	if !withXConnect(t) {
		return
	}
	up := newWSUpstream(t)
	cert := mustSelfSigned(t, "localhost")
	s := startWSProxy(t, cert, up.URL, time.Minute)
	for _, proto := range []string{"h2", "h3"} {
		t.Run(proto, func(t *testing.T) {
			done := make(chan error, 1)
			var leave func()
			if proto == "h2" {
				cfg := client("localhost", cert)
				cfg.NextProtos = []string{"h2"}
				//lint:ignore SA1019 the only Go client for extended CONNECT over HTTP/2
				tr := roundTripCloser(&http2.Transport{TLSClientConfig: cfg})
				pr, pw := io.Pipe()
				defer pw.Close()
				req, _ := http.NewRequest(http.MethodConnect, "https://localhost:"+port(s.Addrs()[0])+"/hang", pr)
				req.URL.Host = s.Addrs()[0]
				req.Header = http.Header{"Sec-Websocket-Version": {"13"}, ":protocol": {"websocket"}}
				ctx, cancel := context.WithCancel(context.Background())
				leave = func() { cancel(); tr.CloseIdleConnections() }
				go func() {
					_, err := tr.RoundTrip(req.WithContext(ctx))
					done <- err
				}()
			} else {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				str, closeConn, err := openH3Stream(ctx, cert, s.Addrs()[0])
				if err != nil {
					t.Fatal(err)
				}
				leave = closeConn
				u, _ := url.Parse("https://localhost:" + port(s.Addrs()[0]) + "/hang")
				req := &http.Request{Method: http.MethodConnect, Proto: "websocket", Host: u.Host, URL: u, Header: http.Header{"Sec-Websocket-Version": {"13"}}}
				if err := str.SendRequestHeader(req); err != nil {
					t.Fatal(err)
				}
				go func() {
					_, err := str.ReadResponse()
					done <- err
				}()
			}
			got := <-up.requests
			leave()
			select {
			case <-got.ended:
			case <-time.After(5 * time.Second):
				t.Fatal("the upstream's connection is still open after the client left")
			}
			<-done
		})
	}
	noGoroutineIn(t, "serveWebSocket")
	must(t, s.Stats().UpstreamErrors == 0, "stats %+v", s.Stats())
}
