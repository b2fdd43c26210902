package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go/quicvarint"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"sync"
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
	conn, str := rawH3Stream(t, s.Addrs()[0], cert)
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

// TestHTTP3ShortBodyIsTheClientsFault sends, over HTTP/3, a POST that
// declares Content-Length 100 and ends its stream after 3 bytes (malformed,
// RFC 9114 §4.1.2). The request must fail as the client's doing, as the
// same request over HTTP/1.1 and HTTP/2 does: not counted as the
// upstream's failure, and no warning that the upstream is failing. quic-go's
// request body ends such a body with io.EOF, not an error: the reverse
// proxy's transport then refused the short body, and the node blamed the
// upstream, so any client could raise tlsfarm_upstream_errors_total and the
// upstream warning at will.
func TestHTTP3ShortBodyIsTheClientsFault(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
	}))
	defer up.Close()
	var logs logBuffer
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) {
		c.Listeners[0].Upstream = up.URL
		c.Listeners[0].HTTP3 = true
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	_, str := rawH3Stream(t, s.Addrs()[0], cert)
	str.Write(rawH3Request(t, http.MethodPost, "/", "content-length", "100"))
	str.Write(h3Frame(0x00, []byte("abc"))) // DATA
	str.Close()                             // the stream ends 97 bytes short
	str.SetReadDeadline(time.Now().Add(5 * time.Second))
	answer, _ := io.ReadAll(str) // reset by the server, or its answer
	status := rawH3Status(answer)
	must(t, status != "200", "a body 97 bytes short of its Content-Length was answered %s", status)

	waitFor(t, func() bool { return s.Stats().UpstreamHTTPRequests == 1 }, "no request: %+v", s.Stats())
	time.Sleep(100 * time.Millisecond) // for the error handler, after the 502
	must(t, s.Stats().UpstreamErrors == 0, "the client's short body counted as an upstream error: %+v", s.Stats())
	must(t, len(logs.lines("level=WARN")) == 0, "warned: %s", logs.String())
}

// rawH3Request returns the HEADERS frame of an HTTP/3 request for
// https://localhost+path, with the header fields given as name, value
// pairs, as sent verbatim: quic-go's client does not let a test send a
// Content-Length of its choosing.
func rawH3Request(t *testing.T, method, path string, fields ...string) []byte {
	t.Helper()
	var block bytes.Buffer
	enc := qpack.NewEncoder(&block)
	all := append([]string{":method", method, ":scheme", "https", ":authority", "localhost", ":path", path}, fields...)
	for i := 0; i+1 < len(all); i += 2 {
		if err := enc.WriteField(qpack.HeaderField{Name: all[i], Value: all[i+1]}); err != nil {
			t.Fatal(err)
		}
	}
	return h3Frame(0x01, block.Bytes())
}

// h3Frame returns an HTTP/3 frame (RFC 9114 §7.1) of type typ.
func h3Frame(typ byte, payload []byte) []byte {
	b := quicvarint.Append([]byte{typ}, uint64(len(payload)))
	return append(b, payload...)
}

// rawH3Status returns the :status of the response whose frames begin b, or
// "" if b holds no HEADERS frame.
func rawH3Status(b []byte) string {
	typ, n, err := quicvarint.Parse(b)
	if err != nil || typ != 0x01 {
		return ""
	}
	length, m, err := quicvarint.Parse(b[n:])
	if err != nil || uint64(len(b[n+m:])) < length {
		return ""
	}
	decode := qpack.NewDecoder().Decode(b[n+m : n+m+int(length)])
	for {
		f, err := decode()
		if err != nil {
			return ""
		}
		if f.Name == ":status" {
			return f.Value
		}
	}
}

// TestHTTP3AltSvcIsTheListeners: a listener that serves HTTP/3 advertises
// its own UDP port, and only it. An upstream's own Alt-Svc (Caddy, nginx
// with QUIC and others send one for their own port) names an endpoint of
// the upstream, not of this listener: passed on next to the listener's, it
// sent browsers to try QUIC where nothing of the farm listens, and
// remember it for the upstream's max-age.
func TestHTTP3AltSvcIsTheListeners(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Alt-Svc", `h3=":1"; ma=2592000`)
		if r.Header.Get("Upgrade") == "websocket" {
			w.WriteHeader(http.StatusForbidden) // refused: its answer is passed on
			return
		}
		io.WriteString(w, "ok")
	}))
	defer up.Close()
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) {
		c.Listeners[0].Upstream = up.URL
		c.Listeners[0].HTTP3 = true
	})
	_, port, _ := strings.Cut(s.Addrs()[0], ":")
	want := fmt.Sprintf(`h3=":%s"; ma=86400`, port)
	resp, _, _ := get(t, s.Addrs()[0], client("localhost", cert), "/", nil)
	if got := resp.Header.Values("Alt-Svc"); len(got) != 1 || got[0] != want {
		t.Errorf("over TCP: Alt-Svc %q, want only %q", got, want)
	}
	tlsConf := client("localhost", cert)
	tlsConf.NextProtos = []string{http3.NextProtoH3}
	rt := &http3.Transport{TLSClientConfig: tlsConf}
	defer rt.Close()
	resp, err := (&http.Client{Transport: rt, Timeout: 10 * time.Second}).Get("https://" + s.Addrs()[0] + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for _, v := range resp.Header.Values("Alt-Svc") {
		if v != want {
			t.Errorf("over HTTP/3: Alt-Svc %q, want none but %q", v, want)
		}
	}
	// A WebSocket the upstream refuses, over HTTP/3.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	str, closeConn, err := openH3Stream(ctx, cert, s.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	defer closeConn()
	u := &url.URL{Scheme: "https", Host: "localhost", Path: "/"}
	if err := str.SendRequestHeader(&http.Request{Method: http.MethodConnect, Proto: "websocket", Host: u.Host, URL: u, Header: http.Header{}}); err != nil {
		t.Fatal(err)
	}
	ws, err := str.ReadResponse()
	if err != nil {
		t.Fatal(err)
	}
	ws.Body.Close()
	must(t, ws.StatusCode == http.StatusForbidden, "WebSocket: status %d, want the upstream's 403", ws.StatusCode)
	for _, v := range ws.Header.Values("Alt-Svc") {
		if v != want {
			t.Errorf("WebSocket over HTTP/3: Alt-Svc %q, want none but %q", v, want)
		}
	}
}

// TestReverseProxyDropsUnderscoreSpoofs sends, over HTTP/1.1, HTTP/2 and
// HTTP/3, the headers the terminator sets for its upstream spelt with
// underscores (X_Forwarded_For...). Upstreams that map header names to
// variables (CGI, WSGI, Rack: HTTP_X_FORWARDED_FOR) read both spellings as
// one, so the client's value could clobber or stand for the terminator's
// (CVE-2024-45614 in Puma is this): they must not reach the upstream, as
// nginx drops them by default.
func TestReverseProxyDropsUnderscoreSpoofs(t *testing.T) {
	var mu sync.Mutex
	var seen http.Header
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = r.Header.Clone()
		mu.Unlock()
	}))
	defer up.Close()
	s, rts := overEveryProtocol(t, up.URL, time.Minute)
	spoofs := []string{"X_Forwarded_For", "X_Forwarded_Proto", "X_Forwarded_Host", "X_Forwarded_Port", "X_TLS_Resumed", "Early_Data", "X-Forwarded_For"}
	for _, tt := range rts {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", "https://"+s.Addrs()[0]+"/", nil)
			for _, k := range spoofs {
				req.Header[k] = []string{"6.6.6.6"}
			}
			req.Header["Not_Owned"] = []string{"kept"}
			resp, err := (&http.Client{Transport: tt.rt, Timeout: 10 * time.Second}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			mu.Lock()
			defer mu.Unlock()
			for k, v := range seen {
				if !strings.Contains(k, "_") {
					continue
				}
				if n := strings.ToLower(k); n != "not_owned" {
					t.Errorf("the upstream saw the client's %s: %q", k, v)
				}
			}
			must(t, seen.Get("Not_Owned") == "kept" || seen.Get("not_owned") == "kept", "a header of the client's own with an underscore was dropped: %v", seen)
		})
	}
}

// TestHTTP3DeclaredHeadersDoNotReserveMemory opens HTTP/3 request streams
// that each declare a large HEADERS frame and send none of it. quic-go's
// server allocates a frame's declared length before reading any of it, up
// to the server's MaxHeaderBytes, on every stream a client may open (100):
// with net/http's default, 1 MB, a few bytes from a client held 100 MB of
// the node's memory per connection, for as long as the connection stayed
// (the idle timeout). The bound must keep that to several MB, and still
// serve a request with 40 KB of headers.
func TestHTTP3DeclaredHeadersDoNotReserveMemory(t *testing.T) {
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) { c.Listeners[0].HTTP3 = true })
	tlsConf := client("localhost", cert)
	tlsConf.NextProtos = []string{http3.NextProtoH3}
	for _, declared := range []uint64{1 << 20, maxHTTP3HeaderBytes} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := quic.DialAddr(ctx, s.Addrs()[0], tlsConf.Clone(), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.CloseWithError(0, "")
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		const streams = 90
		frame := quicvarint.Append([]byte{0x01}, declared) // HEADERS, none of it sent
		for range streams {
			str, err := conn.OpenStreamSync(ctx)
			if err != nil {
				t.Fatal(err)
			}
			str.Write(frame)
			go io.Copy(io.Discard, str) // a frame over the bound: 431
		}
		time.Sleep(500 * time.Millisecond) // for the server to take every stream
		runtime.GC()
		runtime.ReadMemStats(&after)
		grew := int64(after.HeapAlloc) - int64(before.HeapAlloc)
		t.Logf("declared %d KiB: heap grew by %d KiB for %d streams", declared>>10, grew>>10, streams)
		must(t, grew < 12<<20, "%d streams that declared %d KiB of headers and sent none held %d MiB of the server's heap", streams, declared>>10, grew>>20)
		conn.CloseWithError(0, "")
	}
	rt := &http3.Transport{TLSClientConfig: tlsConf.Clone()}
	defer rt.Close()
	req, _ := http.NewRequest("GET", "https://"+s.Addrs()[0]+"/", nil)
	req.Header.Set("Cookie", strings.Repeat("x", 40<<10))
	resp, err := (&http.Client{Transport: rt, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	must(t, resp.StatusCode == http.StatusOK, "a request with 40 KB of headers: status %d", resp.StatusCode)
}

// rawH3Stream dials addr over QUIC with HTTP/3's ALPN, trusting cert for
// localhost, and opens a bidirectional stream on which the test writes raw
// HTTP/3 frames. The connection is closed when the test ends.
func rawH3Stream(t *testing.T, addr string, cert *tls.Certificate) (*quic.Conn, *quic.Stream) {
	t.Helper()
	tlsConf := client("localhost", cert)
	tlsConf.NextProtos = []string{http3.NextProtoH3}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := quic.DialAddr(ctx, addr, tlsConf, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.CloseWithError(0, "") })
	str, err := conn.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	return conn, str
}
