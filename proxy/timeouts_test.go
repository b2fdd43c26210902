package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	proxyproto "github.com/pires/go-proxyproto"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// TestReverseProxyDropsClientForwardingHeaders sends the forwarding headers
// an upstream may believe (every X-Forwarded-*, and RFC 7239's Forwarded)
// from a client that is no proxy: the upstream must see none of the
// client's values, only those the terminator sets.
func TestReverseProxyDropsClientForwardingHeaders(t *testing.T) {
	var mu sync.Mutex
	var seen http.Header
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = r.Header.Clone()
		mu.Unlock()
	}))
	defer up.Close()
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) { c.Listeners[0].Upstream = up.URL })
	for _, tt := range []struct {
		header, spoof, want string // want "": the header is not sent upstream
	}{
		{"X-Forwarded-For", "6.6.6.6", "127.0.0.1"},
		{"X-Forwarded-Proto", "http", "https"},
		{"X-Forwarded-Host", "evil.example", "localhost"},
		{"X-Forwarded-Port", "80", ""},
		{"X-Forwarded-Prefix", "/admin", ""},
		{"X-Forwarded-Ssl", "off", ""},
		{"X-Forwarded-Server", "evil.example", ""},
		{"X-Forwarded-Client-Cert", "Hash=0; Subject=\"CN=admin\"", ""},
		{"Forwarded", "for=6.6.6.6;proto=https", ""},
	} {
		get(t, s.Addrs()[0], client("localhost", cert), "/", http.Header{tt.header: {tt.spoof}})
		mu.Lock()
		got := seen.Values(tt.header)
		mu.Unlock()
		if tt.want == "" && len(got) != 0 || tt.want != "" && (len(got) != 1 || got[0] != tt.want) {
			t.Errorf("client sent %s: %q; upstream saw %q, want %q", tt.header, tt.spoof, got, tt.want)
		}
	}
}

// TestStalledRequestBodyIsCut sends a request's headers and part of its
// body, then nothing: the idle timeout must end the request, and let the
// upstream's go, as it does for a client that stalls in its headers,
// whatever the upstream (the built-in one reads no body: net/http does, to
// reuse the connection).
func TestStalledRequestBodyIsCut(t *testing.T) {
	const idle = 300 * time.Millisecond
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.ReadAll(r.Body)
	}))
	defer up.Close()
	for _, tt := range []struct{ name, upstream, proto string }{
		{"builtin", "builtin", "http/1.1"},
		{"http", up.URL, "http/1.1"},
		{"http h2", up.URL, "h2"},
		{"http h3", up.URL, "h3"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cert := mustSelfSigned(t, "localhost")
			s, _ := start(t, cert, func(c *Config) {
				c.Listeners[0].Upstream = tt.upstream
				c.Listeners[0].NextProtos = []string{"h2", "http/1.1"}
				c.Listeners[0].HTTP3 = true
				c.IdleTimeout = idle
			})
			cfg := client("localhost", cert)
			t0 := time.Now()
			var err error
			switch tt.proto {
			case "h2":
				err = stall(&http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}, s.Addrs()[0])
			case "h3":
				// The client pings, so QUIC's own idle timeout never ends
				// the connection.
				err = stall(&http3.Transport{TLSClientConfig: cfg, QUICConfig: &quic.Config{KeepAlivePeriod: idle / 3}}, s.Addrs()[0])
			default:
				var c *tls.Conn
				if c, err = tls.Dial("tcp", s.Addrs()[0], cfg); err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				io.WriteString(c, "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nabc")
				_, err = io.Copy(io.Discard, c)
			}
			took := time.Since(t0)
			must(t, took < 3*time.Second, "request with a stalled body held for %v (idle timeout %v): %v", took, idle, err)
			if tt.proto == "http/1.1" {
				waitFor(t, func() bool { return s.Stats().Open == 0 }, "connection still open: %+v", s.Stats())
			}
		})
	}
}

// stall sends to addr, over rt, a POST whose body never ends, and returns
// once the request has ended, within 10 seconds.
func stall(rt http.RoundTripper, addr string) error {
	if c, ok := rt.(interface{ CloseIdleConnections() }); ok {
		defer c.CloseIdleConnections()
	}
	pr, pw := io.Pipe()
	defer pw.Close()
	go io.WriteString(pw, "abc")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", "https://"+addr+"/", pr)
	req.ContentLength = 100
	resp, err := rt.RoundTrip(req)
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return err
}

// TestSlowBodyAndSlowUpstreamAreNotCut checks what the idle bound on request
// bodies must leave alone, over HTTP/1.1, HTTP/2 and HTTP/3: a body that
// trickles in, each part within the idle timeout, and an upstream that
// takes longer than the idle timeout to answer once it has the body.
func TestSlowBodyAndSlowUpstreamAreNotCut(t *testing.T) {
	const idle = 300 * time.Millisecond
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		time.Sleep(3 * idle)
		w.Write(b)
	}))
	defer up.Close()
	s, rts := overEveryProtocol(t, up.URL, idle)
	for _, tt := range rts {
		t.Run(tt.name, func(t *testing.T) {
			pr, pw := io.Pipe()
			go func() {
				for range 4 {
					io.WriteString(pw, "part ")
					time.Sleep(idle / 2)
				}
				pw.Close()
			}()
			req, _ := http.NewRequest("POST", "https://"+s.Addrs()[0]+"/", pr)
			resp, err := (&http.Client{Transport: tt.rt, Timeout: 10 * time.Second}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			must(t, err == nil && resp.StatusCode == 200 && string(body) == strings.Repeat("part ", 4),
				"%s: status %d, body %q, %v", resp.Proto, resp.StatusCode, body, err)
			must(t, resp.ProtoMajor == map[string]int{"http/1.1": 1, "h2": 2, "h3": 3}[tt.name], "spoke %s", resp.Proto)
		})
	}
}

// TestClientGoneIsNoUpstreamError has clients leave before a slow upstream
// answers, or stall in their request body: neither is the upstream's
// failure, so neither counts as an upstream error or warns that the
// upstream is failing.
func TestClientGoneIsNoUpstreamError(t *testing.T) {
	const idle = 300 * time.Millisecond
	got := make(chan struct{}, 2)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.ReadAll(r.Body)
		got <- struct{}{}
		<-r.Context().Done()
	}))
	defer up.Close()
	defer up.CloseClientConnections()
	var logs logBuffer
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) {
		c.Listeners[0].Upstream = up.URL
		c.Listeners[0].NextProtos = []string{"h2", "http/1.1"}
		c.IdleTimeout = idle
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	for _, tt := range []struct{ name, request string }{
		{"hung up", "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"},
		{"stalled body", "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nabc"},
		{"stalled body h2", ""},
	} {
		if tt.request == "" {
			cfg := client("localhost", cert)
			stall(&http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}, s.Addrs()[0])
			waitFor(t, func() bool { return s.Stats().UpstreamHTTPRequests == 3 }, "%s: no request", tt.name)
			time.Sleep(100 * time.Millisecond) // for the error handler, after the 502
			must(t, s.Stats().UpstreamErrors == 0, "%s: counted as an upstream error: %+v", tt.name, s.Stats())
			must(t, len(logs.lines("level=WARN")) == 0, "%s: warned: %s", tt.name, logs.String())
			continue
		}
		c, err := tls.Dial("tcp", s.Addrs()[0], client("localhost", cert))
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, tt.request)
		if tt.name == "hung up" {
			<-got
			c.Close()
		} else {
			io.Copy(io.Discard, c) // until the idle timeout cuts it
			c.Close()
		}
		waitFor(t, func() bool { return s.Stats().Open == 0 }, "%s: connection still open", tt.name)
		must(t, s.Stats().UpstreamErrors == 0, "%s: counted as an upstream error: %+v", tt.name, s.Stats())
		must(t, len(logs.lines("level=WARN")) == 0, "%s: warned: %s", tt.name, logs.String())
	}
}

// TestShutdownServesConnectionsInHandshake starts a shutdown while a
// client, already accepted, has yet to send its hello: its handshake
// completes within the handshake timeout, and its request is answered
// before the server closes the connection.
func TestShutdownServesConnectionsInHandshake(t *testing.T) {
	for _, proto := range []string{"http/1.1", "h2"} {
		t.Run(proto, func(t *testing.T) {
			cert := mustSelfSigned(t, "localhost")
			s, _ := start(t, cert, func(c *Config) { c.Listeners[0].NextProtos = []string{"h2", "http/1.1"} })
			raw, err := net.Dial("tcp", s.Addrs()[0])
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			waitFor(t, func() bool { return s.Stats().Accepted == 1 }, "not accepted")
			shut := shutdownInBackground(t, s)
			time.Sleep(100 * time.Millisecond)
			cfg := client("localhost", cert)
			cfg.NextProtos = []string{proto}
			tc := tls.Client(raw, cfg)
			tr := &http.Transport{
				ForceAttemptHTTP2: true,
				DialTLSContext:    func(context.Context, string, string) (net.Conn, error) { return tc, tc.Handshake() },
			}
			resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("https://localhost/")
			if err != nil {
				t.Fatalf("request on a connection accepted before the shutdown: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			tr.CloseIdleConnections()
			must(t, resp.StatusCode == 200 && bytes.Contains(body, []byte(`"node"`)), "%s %d: %s", resp.Proto, resp.StatusCode, body)
			must(t, resp.ProtoMajor == map[string]int{"http/1.1": 1, "h2": 2}[proto], "spoke %s", resp.Proto)
			if err := <-shut; err != nil {
				t.Errorf("Shutdown: %v", err)
			}
		})
	}
}

// TestStalledResponseReaderIsCut has clients stop reading a large response:
// the idle timeout must end the request (and the upstream's), not leave it
// blocked in a write for ever.
func TestStalledResponseReaderIsCut(t *testing.T) {
	const idle = 300 * time.Millisecond
	for _, proto := range []string{"http/1.1", "h2"} {
		t.Run(proto, func(t *testing.T) {
			ended := make(chan error, 1)
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				buf := bytes.Repeat([]byte("x"), 32<<10)
				var err error
				for i := 0; i < 2048 && err == nil; i++ { // 64 MiB
					_, err = w.Write(buf)
				}
				ended <- err
			}))
			defer up.Close()
			defer up.CloseClientConnections()
			cert := mustSelfSigned(t, "localhost")
			s, _ := start(t, cert, func(c *Config) {
				c.Listeners[0].Upstream = up.URL
				c.Listeners[0].NextProtos = []string{"h2", "http/1.1"}
				c.IdleTimeout = idle
			})
			cfg := client("localhost", cert)
			cfg.NextProtos = []string{proto}
			tr := &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: proto == "h2"}
			defer tr.CloseIdleConnections()
			resp, err := (&http.Client{Transport: tr}).Get("https://" + s.Addrs()[0] + "/")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			must(t, resp.ProtoMajor == map[string]int{"http/1.1": 1, "h2": 2}[proto], "spoke %s", resp.Proto)
			io.ReadFull(resp.Body, make([]byte, 1<<10)) // then nothing
			select {
			case err := <-ended:
				must(t, err != nil, "the upstream wrote all 64 MiB")
			case <-time.After(5 * time.Second):
				t.Fatalf("%s: request still blocked 5 s after its client stopped reading (idle timeout %v)", resp.Proto, idle)
			}
		})
	}
}

// TestSlowStreamingUpstreamIsNotCut streams a response whose parts come
// further apart than the idle timeout (flushed, as server-sent events
// are), over HTTP/1.1, HTTP/2 and HTTP/3: the bound on writes must not cut
// it, as the client reads each part at once.
func TestSlowStreamingUpstreamIsNotCut(t *testing.T) {
	const idle = 300 * time.Millisecond
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for range 3 {
			io.WriteString(w, "data: part\n\n")
			w.(http.Flusher).Flush()
			time.Sleep(2 * idle)
		}
	}))
	defer up.Close()
	s, rts := overEveryProtocol(t, up.URL, idle)
	for _, tt := range rts {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := (&http.Client{Transport: tt.rt, Timeout: 10 * time.Second}).Get("https://" + s.Addrs()[0] + "/")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			must(t, err == nil && string(body) == strings.Repeat("data: part\n\n", 3), "%s: body %q, %v", resp.Proto, body, err)
		})
	}
}

// TestHTTP3SlowUpstreamIsNotCut has an HTTP/3 client that sends no pings
// (quic-go's default) wait for an upstream slower than the idle timeout:
// as over TCP, the request must be answered, and the connection still
// closes once it has been idle for the idle timeout.
func TestHTTP3SlowUpstreamIsNotCut(t *testing.T) {
	const idle = 300 * time.Millisecond
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(3 * idle)
		io.WriteString(w, "slow")
	}))
	defer up.Close()
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) {
		c.Listeners[0].Upstream = up.URL
		c.Listeners[0].HTTP3 = true
		c.IdleTimeout = idle
	})
	tr := &http3.Transport{TLSClientConfig: client("localhost", cert)}
	defer tr.Close()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://" + s.Addrs()[0] + "/")
	if err != nil {
		t.Fatalf("HTTP/3 request to an upstream that takes %v (idle timeout %v): %v", 3*idle, idle, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	must(t, err == nil && string(body) == "slow", "body %q, %v", body, err)
	q := s.listeners[0].quic
	waitFor(t, func() bool {
		q.mu.Lock()
		defer q.mu.Unlock()
		return len(q.conns) == 0
	}, "the idle HTTP/3 connection was not closed")
}

// TestUpgradeStillSwitchesProtocols sends an Upgrade request through the
// reverse proxy, whose response writer is now wrapped: the proxy must
// still hijack the connection and pass bytes both ways after the 101.
func TestUpgradeStillSwitchesProtocols(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		line, _ := brw.ReadString('\n')
		io.WriteString(c, "echo: "+line)
	}))
	defer up.Close()
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) { c.Listeners[0].Upstream = up.URL })
	c, err := tls.Dial("tcp", s.Addrs()[0], client("localhost", cert))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	must(t, resp.StatusCode == http.StatusSwitchingProtocols, "status %d", resp.StatusCode)
	io.WriteString(c, "hello\n")
	line, err := br.ReadString('\n')
	must(t, err == nil && line == "echo: hello\n", "after the switch: %q, %v", line, err)
}

// TestProxyHeaderWaitFollowsReload raises the handshake timeout with a
// reload: the wait for the PROXY header, part of the handshake, must
// follow it, as a lowered one already did.
func TestProxyHeaderWaitFollowsReload(t *testing.T) {
	cert := mustSelfSigned(t, "localhost")
	var cfg Config
	s, _ := start(t, cert, func(c *Config) {
		c.HandshakeTimeout = 300 * time.Millisecond
		c.Listeners[0].ProxyProtocol = true
		c.Listeners[0].ProxyTrusted = []string{"127.0.0.1"}
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		cfg = *c
	})
	cfg.HandshakeTimeout = 5 * time.Second
	if err := s.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	raw, err := net.Dial("tcp", s.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	time.Sleep(time.Second) // past the old timeout, within the new one
	h := proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.ParseIP("203.0.113.7"), Port: 4242}, raw.RemoteAddr())
	if _, err := h.WriteTo(raw); err != nil {
		t.Fatal(err)
	}
	c := tls.Client(raw, client("localhost", cert))
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := c.Handshake(); err != nil {
		t.Fatalf("handshake 1 s after connecting, handshake timeout reloaded to 5 s: %v (%+v)", err, s.Stats())
	}
	_, body, _ := roundTrip(t, c, "/", nil)
	must(t, bytes.Contains(body, []byte("203.0.113.7:4242")), "facts: %s", body)
}

// TestMaxConnectionsBoundsHTTP3 opens HTTP/3 connections to a listener
// with MaxConnections 2: a third is refused while two are open, and taken
// once one has closed.
func TestMaxConnectionsBoundsHTTP3(t *testing.T) {
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) {
		c.MaxConnections = 2
		c.Listeners[0].HTTP3 = true
	})
	tlsConf := client("localhost", cert)
	tlsConf.NextProtos = []string{http3.NextProtoH3}
	dial := func() (*quic.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		return quic.DialAddr(ctx, s.Addrs()[0], tlsConf.Clone(), nil)
	}
	var open []*quic.Conn
	for range 2 {
		c, err := dial()
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
	}
	if c, err := dial(); err == nil {
		c.CloseWithError(0, "")
		t.Fatal("a third HTTP/3 connection was taken with MaxConnections 2")
	}
	open[0].CloseWithError(0, "")
	var c *quic.Conn
	waitFor(t, func() bool {
		var err error
		c, err = dial()
		return err == nil
	}, "no HTTP/3 connection taken after one of two closed")
	c.CloseWithError(0, "")
	open[1].CloseWithError(0, "")
}

// TestUploadToPausingUpstreamIsNotCut sends a large body, at full speed,
// to an upstream that stops reading it for longer than the idle timeout:
// the client is not the one waiting, so its request must not be cut, over
// HTTP/1.1, HTTP/2 and HTTP/3.
//
// The idle timeout is 2 s, not a few hundred milliseconds: while the
// upstream reads, each read of the body waits for the client's next bytes,
// and under -race on a loaded machine a client process starved of CPU sent
// nothing on the wire for 300 to 700 ms between reads, a stall as the
// proxy rightly sees it. The pause, 1.5 times the idle timeout, still
// outlasts it by a second: a bound that held while the upstream did not
// read would cut the client.
func TestUploadToPausingUpstreamIsNotCut(t *testing.T) {
	const idle = 2 * time.Second
	const pause = idle + idle/2
	const size = 16 << 20
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.ReadFull(r.Body, make([]byte, 1<<10))
		time.Sleep(pause)
		n, err := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%d %v", n+1<<10, err)
	}))
	defer up.Close()
	s, rts := overEveryProtocol(t, up.URL, idle)
	for _, tt := range rts {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", "https://"+s.Addrs()[0]+"/", bytes.NewReader(make([]byte, size)))
			resp, err := (&http.Client{Transport: tt.rt, Timeout: time.Minute}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			must(t, err == nil && resp.StatusCode == 200 && string(body) == fmt.Sprintf("%d <nil>", size),
				"%s: status %d, body %q, %v", resp.Proto, resp.StatusCode, body, err)
		})
	}
}

// A namedTransport is a client transport for one HTTP version.
type namedTransport struct {
	name string
	rt   http.RoundTripper
}

// overEveryProtocol starts a server that proxies to upstream over
// HTTP/1.1, HTTP/2 and HTTP/3 with the idle timeout idle, and returns it
// with a client transport for each. The HTTP/3 client pings: QUIC's own
// idle timeout (the smaller of both ends') would otherwise end the
// connection while the upstream thinks.
func overEveryProtocol(t *testing.T, upstream string, idle time.Duration) (*Server, []namedTransport) {
	t.Helper()
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) {
		c.Listeners[0].Upstream = upstream
		c.Listeners[0].NextProtos = []string{"h2", "http/1.1"}
		c.Listeners[0].HTTP3 = true
		c.IdleTimeout = idle
	})
	cfg := client("localhost", cert)
	return s, []namedTransport{
		{"http/1.1", &http.Transport{TLSClientConfig: cfg}},
		{"h2", &http.Transport{TLSClientConfig: cfg.Clone(), ForceAttemptHTTP2: true}},
		{"h3", &http3.Transport{TLSClientConfig: cfg.Clone(), QUICConfig: &quic.Config{KeepAlivePeriod: idle / 3}}},
	}
}
