package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
	"github.com/tlsfarm/tlsfarm/ticket"
)

// start starts a server with one listener on a loopback port, serving cert
// (a fresh self-signed one for localhost if nil), after edit has changed
// the config. It is shut down when the test ends.
func start(t testing.TB, cert *tls.Certificate, edit func(*Config)) (*Server, *session.Cache) {
	t.Helper()
	if cert == nil {
		cert = mustSelfSigned(t, "localhost")
	}
	cache, err := session.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cache.Close() })
	ring, err := ticket.NewRing(ticket.RingConfig{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Node:      "test-node",
		Cache:     cache,
		Ring:      ring,
		Listeners: []Listener{{Address: "127.0.0.1:0", Certificates: []Certificate{{Certificate: cert}}, NextProtos: []string{"http/1.1"}}},
	}
	if edit != nil {
		edit(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	return s, cache
}

func mustSelfSigned(t testing.TB, names ...string) *tls.Certificate {
	t.Helper()
	c, err := SelfSigned(names...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// client returns a client config that trusts certs, sends serverName and
// keeps sessions in a cache of its own.
func client(serverName string, certs ...*tls.Certificate) *tls.Config {
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c.Leaf)
	}
	return &tls.Config{
		RootCAs:            pool,
		ServerName:         serverName,
		ClientSessionCache: tls.NewLRUClientSessionCache(8),
		NextProtos:         []string{"http/1.1"},
	}
}

// get makes one HTTP/1.1 request over a new TLS connection and returns the
// response body and the connection's state. The body is read in full, so a
// TLS 1.3 ticket sent with it reaches the client's cache.
func get(t *testing.T, addr string, cfg *tls.Config, path string, header http.Header) (*http.Response, []byte, tls.ConnectionState) {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return roundTrip(t, c, path, header)
}

func roundTrip(t *testing.T, c *tls.Conn, path string, header http.Header) (*http.Response, []byte, tls.ConnectionState) {
	t.Helper()
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	req, _ := http.NewRequest("GET", "https://"+c.ConnectionState().ServerName+path, nil)
	if header != nil {
		req.Header = header
	}
	req.Close = true
	if err := req.Write(c); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body, c.ConnectionState()
}

// getFacts makes a request to the built-in upstream and decodes its answer.
func getFacts(t *testing.T, addr string, cfg *tls.Config) Facts {
	t.Helper()
	_, body, _ := get(t, addr, cfg, "/", nil)
	var f Facts
	if err := json.Unmarshal(body, &f); err != nil {
		t.Fatalf("facts: %v in %q", err, body)
	}
	return f
}

func handshakes(s *Server, version uint16, resumed bool) uint64 {
	for _, h := range s.Stats().Handshakes {
		if h.Version == version && h.Resumed == resumed {
			return h.Count
		}
	}
	return 0
}

func must(t *testing.T, ok bool, format string, args ...any) {
	t.Helper()
	if !ok {
		t.Fatalf(format, args...)
	}
}

// shutdownInBackground starts s.Shutdown (bounded by 5 s) and waits until s
// no longer reports ready; Shutdown's result comes on the channel.
func shutdownInBackground(t *testing.T, s *Server) <-chan error {
	t.Helper()
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		shut <- s.Shutdown(ctx)
	}()
	waitFor(t, func() bool { return s.Ready() != nil }, "still ready during shutdown")
	return shut
}
