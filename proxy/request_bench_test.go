package proxy

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/quic-go/quic-go/http3"
)

// BenchmarkProxyRequest measures one request through the reverse proxy on
// a kept-alive TLS connection (HTTP/1.1): a POST of 1 KiB answered with
// 4 KiB by an upstream on loopback. It is the request path the idle
// bounds on bodies and writes sit on.
func BenchmarkProxyRequest(b *testing.B) {
	answer := bytes.Repeat([]byte("a"), 4<<10)
	cert := mustSelfSigned(b, "localhost")
	s, _ := start(b, cert, func(c *Config) { c.Listeners[0].Upstream = answering(b, answer) })
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: client("localhost", cert)}}
	benchPost(b, hc, "https://"+s.Addrs()[0]+"/", answer, 1, false)
}

// BenchmarkProxyRequestHTTP2 is BenchmarkProxyRequest over HTTP/2: one
// request at a time on one kept-alive connection. It is the path of the
// bound on a response's last flush (see serveRequest).
func BenchmarkProxyRequestHTTP2(b *testing.B) {
	answer := bytes.Repeat([]byte("a"), 4<<10)
	cert := mustSelfSigned(b, "localhost")
	s, _ := start(b, cert, func(c *Config) {
		c.Listeners[0].Upstream = answering(b, answer)
		c.Listeners[0].NextProtos = []string{"h2"}
	})
	cfg := client("localhost", cert)
	cfg.NextProtos = []string{"h2"}
	tr := &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	benchPost(b, &http.Client{Transport: tr}, "https://"+s.Addrs()[0]+"/", answer, 2, false)
}

// BenchmarkProxyRequestHTTP3 is BenchmarkProxyRequest over HTTP/3, with
// an answer of 2000 bytes: one that http3 keeps whole in its buffer, so
// that it goes out in the bounded last flush (statusWriter.lastFlush).
func BenchmarkProxyRequestHTTP3(b *testing.B) {
	answer := bytes.Repeat([]byte("a"), 2000)
	cert := mustSelfSigned(b, "localhost")
	s, _ := start(b, cert, func(c *Config) {
		c.Listeners[0].Upstream = answering(b, answer)
		c.Listeners[0].HTTP3 = true
	})
	tr := &http3.Transport{TLSClientConfig: client("localhost", cert)}
	defer tr.Close()
	benchPost(b, &http.Client{Transport: tr}, "https://"+s.Addrs()[0]+"/", answer, 3, true)
}

// answering starts an upstream on loopback that reads each request's body
// and answers with answer; it returns its URL and stops when b ends.
func answering(b *testing.B, answer []byte) string {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Write(answer)
	}))
	b.Cleanup(up.Close)
	return up.URL
}

// benchPost POSTs 1 KiB to url with hc in b's loop, and fails on any answer
// but answer, whole, over HTTP/major (any version for 1), with its
// Content-Length if withLength.
func benchPost(b *testing.B, hc *http.Client, url string, answer []byte, major int, withLength bool) {
	body := bytes.Repeat([]byte("b"), 1<<10)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		resp, err := hc.Post(url, "application/octet-stream", bytes.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || (major > 1 && resp.ProtoMajor != major) || n != int64(len(answer)) ||
			withLength && resp.ContentLength != int64(len(answer)) {
			b.Fatalf("request %d: %s status %d, %d bytes (Content-Length %d), %v", i, resp.Proto, resp.StatusCode, n, resp.ContentLength, err)
		}
	}
}
