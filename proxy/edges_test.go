package proxy

import (
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/logtest"
	"github.com/tlsfarm/tlsfarm/session"
)

// logBuffer is a log destination safe for concurrent writers.
type logBuffer struct{ logtest.Buffer }

// lines returns the log lines that contain s.
func (l *logBuffer) lines(s string) []string {
	var out []string
	for _, line := range strings.Split(l.String(), "\n") {
		if strings.Contains(line, s) {
			out = append(out, line)
		}
	}
	return out
}

func TestProxyProtocolNeedsTrustedRanges(t *testing.T) {
	cache, err := session.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	_, err = New(Config{Cache: cache, Listeners: []Listener{{Address: "127.0.0.1:0", ProxyProtocol: true,
		Certificates: []Certificate{{Certificate: mustSelfSigned(t, "localhost")}}}}})
	if err == nil || !strings.Contains(err.Error(), "ProxyTrusted") {
		t.Fatalf("New with PROXY protocol and no trusted ranges: %v", err)
	}
}

// TestMissingProxyHeaderWarnsOncePerInterval makes handshakes without the
// PROXY header the listener expects (a balancer missing send-proxy): one
// warn line per warnInterval, counting the failures it stands for, with a
// client address; each failure also has a debug line with the address.
func TestMissingProxyHeaderWarnsOncePerInterval(t *testing.T) {
	cert := mustSelfSigned(t, "localhost")
	var logs logBuffer
	var skew atomic.Int64
	s, _ := start(t, cert, func(c *Config) {
		c.Listeners[0].ProxyProtocol = true
		c.Listeners[0].ProxyTrusted = []string{"127.0.0.0/8"}
		c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	s.warn.now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	fail := func(n int) {
		for range n {
			if c, err := tls.Dial("tcp", s.Addrs()[0], client("localhost", cert)); err == nil {
				c.Close()
				t.Fatal("handshake without a PROXY header succeeded")
			}
		}
	}
	fail(20)
	waitFor(t, func() bool { return len(logs.lines("level=DEBUG msg=\"handshake failed\"")) == 20 }, "failures logged: %+v", s.Stats())
	warns := logs.lines("level=WARN")
	if len(warns) != 1 || !strings.Contains(warns[0], "count=1 ") || !strings.Contains(warns[0], "example_client=127.0.0.1:") {
		t.Fatalf("20 failures within the interval: want one warn line with a count and a client, got:\n%s", strings.Join(warns, "\n"))
	}
	if d := logs.lines("level=DEBUG msg=\"handshake failed\""); len(d) != 20 || !strings.Contains(d[0], "client=127.0.0.1:") {
		t.Fatalf("want 20 debug lines with the client address, got %d: %q", len(d), d)
	}
	skew.Add(int64(warnInterval))
	fail(1)
	waitFor(t, func() bool { return len(logs.lines("level=WARN")) == 2 }, "no second warn line after the interval")
	if w := logs.lines("level=WARN")[1]; !strings.Contains(w, "count=20 ") || !strings.Contains(w, "send-proxy") {
		t.Fatalf("second line should count the 19 suppressed failures and this one: %s", w)
	}
}

// TestUntrustedProxySenderCounted: a connection from outside the trusted
// ranges is closed and counted.
func TestUntrustedProxySenderCounted(t *testing.T) {
	s, _ := start(t, nil, func(c *Config) {
		c.Listeners[0].ProxyProtocol = true
		c.Listeners[0].ProxyTrusted = []string{"192.0.2.0/24"}
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	})
	c, err := net.Dial("tcp", s.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("an untrusted sender's connection stayed open")
	}
	waitFor(t, func() bool { return s.Stats().ProxyUntrusted == 1 }, "untrusted sender not counted: %+v", s.Stats())
}

// TestProxyHeaderWaitIsTheHandshakeTimeout: a connection that never sends
// its PROXY header is cut at the handshake timeout, not the idle timeout.
func TestProxyHeaderWaitIsTheHandshakeTimeout(t *testing.T) {
	s, _ := start(t, nil, func(c *Config) {
		c.HandshakeTimeout = 300 * time.Millisecond
		c.IdleTimeout = time.Minute
		c.Listeners[0].ProxyProtocol = true
		c.Listeners[0].ProxyTrusted = []string{"127.0.0.1"}
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	})
	c, err := net.Dial("tcp", s.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	t0 := time.Now()
	io.ReadAll(c)
	if took := time.Since(t0); took > 3*time.Second {
		t.Fatalf("a connection without a PROXY header was held %v (handshake timeout 300ms)", took)
	}
}

// TestProxyTrustedRangesOnDualStackListener: on a listener bound to
// every address ("[::]:0"), an IPv4 balancer's connection comes in as an
// IPv4-mapped IPv6 address. It must still match an IPv4 range of
// proxy_protocol.trusted (its PROXY header is taken and the handshake
// completes), and must not match an IPv6 range that holds no IPv4
// address (closed and counted as untrusted).
func TestProxyTrustedRangesOnDualStackListener(t *testing.T) {
	for _, tc := range []struct {
		trusted string
		want    bool
	}{
		{"127.0.0.0/8", true},
		{"127.0.0.1", true},
		{"::1/128", false},
		{"::ffff:127.0.0.0/104", true},
		{"192.0.2.0/24", false},
	} {
		t.Run(tc.trusted, func(t *testing.T) {
			cert := mustSelfSigned(t, "localhost")
			s, _ := start(t, cert, func(c *Config) {
				c.Listeners[0].Address = "[::]:0"
				c.Listeners[0].ProxyProtocol = true
				c.Listeners[0].ProxyTrusted = []string{tc.trusted}
				c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
			})
			_, port, err := net.SplitHostPort(s.Addrs()[0])
			if err != nil {
				t.Fatal(err)
			}
			raw, err := net.Dial("tcp4", net.JoinHostPort("127.0.0.1", port))
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			raw.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := raw.Write([]byte("PROXY TCP4 192.0.2.1 192.0.2.2 40000 443\r\n")); err != nil {
				t.Fatal(err)
			}
			err = tls.Client(raw, client("localhost", cert)).Handshake()
			if got := err == nil; got != tc.want {
				t.Fatalf("trusted %q, IPv4 sender on a dual-stack listener: handshake error %v; want accepted %t", tc.trusted, err, tc.want)
			}
			if !tc.want {
				waitFor(t, func() bool { return s.Stats().ProxyUntrusted == 1 }, "untrusted sender not counted: %+v", s.Stats())
			}
		})
	}
}
