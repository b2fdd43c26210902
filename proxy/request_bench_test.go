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
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Write(answer)
	}))
	defer up.Close()
	cert := mustSelfSigned(b, "localhost")
	s, _ := start(b, cert, func(c *Config) { c.Listeners[0].Upstream = up.URL })
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: client("localhost", cert)}}
	url := "https://" + s.Addrs()[0] + "/"
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
		if err != nil || resp.StatusCode != http.StatusOK || n != int64(len(answer)) {
			b.Fatalf("request %d: status %d, %d bytes, %v", i, resp.StatusCode, n, err)
		}
	}
}

// BenchmarkProxyRequestHTTP2 is BenchmarkProxyRequest over HTTP/2: one
// request at a time on one kept-alive connection. It is the path of the
// bound on a response's last flush (see serveRequest).
func BenchmarkProxyRequestHTTP2(b *testing.B) {
	answer := bytes.Repeat([]byte("a"), 4<<10)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Write(answer)
	}))
	defer up.Close()
	cert := mustSelfSigned(b, "localhost")
	s, _ := start(b, cert, func(c *Config) {
		c.Listeners[0].Upstream = up.URL
		c.Listeners[0].NextProtos = []string{"h2"}
	})
	cfg := client("localhost", cert)
	cfg.NextProtos = []string{"h2"}
	tr := &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	url := "https://" + s.Addrs()[0] + "/"
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
		if err != nil || resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 || n != int64(len(answer)) {
			b.Fatalf("request %d: %s status %d, %d bytes, %v", i, resp.Proto, resp.StatusCode, n, err)
		}
	}
}

// BenchmarkProxyRequestHTTP3 is BenchmarkProxyRequest over HTTP/3, with
// an answer of 2000 bytes: one that http3 keeps whole in its buffer, so
// that it goes out in the bounded last flush (statusWriter.lastFlush).
func BenchmarkProxyRequestHTTP3(b *testing.B) {
	answer := bytes.Repeat([]byte("a"), 2000)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Write(answer)
	}))
	defer up.Close()
	cert := mustSelfSigned(b, "localhost")
	s, _ := start(b, cert, func(c *Config) {
		c.Listeners[0].Upstream = up.URL
		c.Listeners[0].HTTP3 = true
	})
	tr := &http3.Transport{TLSClientConfig: client("localhost", cert)}
	defer tr.Close()
	hc := &http.Client{Transport: tr}
	url := "https://" + s.Addrs()[0] + "/"
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
		if err != nil || resp.StatusCode != http.StatusOK || resp.ProtoMajor != 3 || n != int64(len(answer)) || resp.ContentLength != int64(len(answer)) {
			b.Fatalf("request %d: %s status %d, %d bytes (Content-Length %d), %v", i, resp.Proto, resp.StatusCode, n, resp.ContentLength, err)
		}
	}
}
