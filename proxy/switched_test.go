package proxy

import (
	"bufio"
	"crypto/tls"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/quic-go/quic-go/http3"
)

// TestUpgradedConnectionIdleIsCut switches connections to another protocol
// through the reverse proxy (as a WebSocket does): once nothing moves
// either way for the idle timeout, the proxy must close both the client's
// and the upstream's connection, as TCP passthrough does; traffic either
// way within the timeout must keep it open.
//
// tlsfarm_websockets_open must count each while it is open, and go back
// to 0 once it is cut.
func TestUpgradedConnectionIdleIsCut(t *testing.T) {
	// Long enough that a loaded machine (-race, two cores shared with
	// other packages' tests) does not stall the busy client's pings past
	// it: at 300 ms, a stall of 200 ms cut a busy connection in CI.
	const idle = time.Second
	upEnded := make(chan time.Time, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(15 * time.Second))
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		switch r.URL.Path {
		case "/echo":
			for {
				line, err := brw.ReadString('\n')
				if err != nil {
					break
				}
				if _, err := io.WriteString(c, "echo: "+line); err != nil {
					break
				}
			}
		case "/flood":
			buf := make([]byte, 32<<10)
			for {
				if _, err := c.Write(buf); err != nil {
					break
				}
			}
		}
		upEnded <- time.Now()
	}))
	defer up.Close()
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) {
		c.Listeners[0].Upstream = up.URL
		c.IdleTimeout = idle
	})
	upgrade := func(t *testing.T, path string) (*tls.Conn, *bufio.Reader) {
		c, err := tls.Dial("tcp", s.Addrs()[0], client("localhost", cert))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		must(t, resp.StatusCode == http.StatusSwitchingProtocols, "status %d", resp.StatusCode)
		n := wsSample(t, s, "tlsfarm_websockets_open", "proto", "h1")
		must(t, n == 1, "switched connections counted open: %v", n)
		return c, br
	}
	// cut waits for the proxy to close the client's connection, reading
	// what is left, and checks that it did so in time, and the upstream's
	// connection too.
	cut := func(t *testing.T, t0 time.Time, br *bufio.Reader) {
		_, err := io.Copy(io.Discard, br)
		took := time.Since(t0)
		must(t, took < 4*time.Second, "switched connection idle for %v (idle timeout %v) before the client saw its end: %v", took, idle, err)
		select {
		case end := <-upEnded:
			must(t, end.Sub(t0) < 4*time.Second, "upstream's connection ended %v after the last traffic", end.Sub(t0))
		case <-time.After(5 * time.Second):
			t.Fatal("upstream's connection still open")
		}
		waitFor(t, func() bool { return s.Stats().Open == 0 }, "client's connection still open: %+v", s.Stats())
		// Counted open until cut, once (the cut and ReverseProxy's
		// close of the upstream's side both close it).
		waitFor(t, func() bool { return wsSample(t, s, "tlsfarm_websockets_open", "proto", "h1") == 0 },
			"switched connections counted open after the cut: %v", wsSample(t, s, "tlsfarm_websockets_open", "proto", "h1"))
	}

	t.Run("silent", func(t *testing.T) {
		_, br := upgrade(t, "/echo")
		cut(t, time.Now(), br)
	})
	t.Run("busy then silent", func(t *testing.T) {
		c, br := upgrade(t, "/echo")
		for range 8 { // 8 × idle/4: longer than the timeout
			time.Sleep(idle / 4)
			io.WriteString(c, "ping\n")
			line, err := br.ReadString('\n')
			must(t, err == nil && line == "echo: ping\n", "busy switched connection: %q, %v", line, err)
		}
		cut(t, time.Now(), br)
	})
	t.Run("client not reading", func(t *testing.T) {
		_, br := upgrade(t, "/flood")
		// The upstream writes until the buffers on the way are full;
		// then nothing moves.
		t0 := time.Now()
		select {
		case end := <-upEnded:
			must(t, end.Sub(t0) < 5*time.Second, "upstream's connection ended after %v", end.Sub(t0))
		case <-time.After(6 * time.Second):
			t.Fatal("upstream still writing to a client that does not read")
		}
		io.Copy(io.Discard, br)
		waitFor(t, func() bool { return s.Stats().Open == 0 }, "client's connection still open: %+v", s.Stats())
	})
}

// TestHTTP3HandshakeTimeoutFollowsReload changes the handshake timeout
// with reloads, and makes HTTP/3 handshakes whose client stalls for a
// second (it checks the server's certificate that long): raised from
// 300 ms to 5 s, the handshake must complete, as over TCP; lowered back,
// it must fail.
func TestHTTP3HandshakeTimeoutFollowsReload(t *testing.T) {
	cert := mustSelfSigned(t, "localhost")
	var cfg Config
	s, _ := start(t, cert, func(c *Config) {
		c.HandshakeTimeout = 300 * time.Millisecond
		c.Listeners[0].HTTP3 = true
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		cfg = *c
	})
	dial := func() error {
		tlsConf := client("localhost", cert)
		tlsConf.VerifyConnection = func(tls.ConnectionState) error {
			time.Sleep(time.Second)
			return nil
		}
		rt := &http3.Transport{TLSClientConfig: tlsConf}
		defer rt.Close()
		resp, err := (&http.Client{Transport: rt, Timeout: 4 * time.Second}).Get("https://" + s.Addrs()[0] + "/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}
	cfg.HandshakeTimeout = 5 * time.Second
	if err := s.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if err := dial(); err != nil {
		t.Fatalf("HTTP/3 handshake stalled 1 s, handshake timeout reloaded to 5 s: %v", err)
	}
	// Counted once the server's side of the handshake completes, on a
	// goroutine of its own: it may come after the answer.
	waitFor(t, func() bool { return s.QUICStats().FullHandshakes == 1 }, "handshakes: %+v", s.QUICStats())
	cfg.HandshakeTimeout = 300 * time.Millisecond
	if err := s.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if err := dial(); err == nil {
		t.Fatal("HTTP/3 handshake stalled 1 s, handshake timeout reloaded to 300 ms: the request was answered")
	}
	must(t, s.QUICStats().FullHandshakes == 1, "handshakes: %+v", s.QUICStats())
}
