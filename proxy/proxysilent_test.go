package proxy

import (
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"
)

// TestSilentProxyProtocolClientIsATimeout connects to a listener with the
// PROXY protocol and sends nothing: the handshake times out, and must count
// as a timeout, as the same silence does on a listener without the PROXY
// protocol, not as a missing PROXY header, whose warning sends operators
// to their balancer's configuration. A client that sends something other
// than a header still counts as a PROXY header failure (as does part of a
// v1 header: the library refuses a header not read at once).
func TestSilentProxyProtocolClientIsATimeout(t *testing.T) {
	cert := mustSelfSigned(t, "localhost")
	var logs logBuffer
	s, _ := start(t, cert, func(c *Config) {
		c.HandshakeTimeout = 300 * time.Millisecond
		c.Listeners[0].ProxyProtocol = true
		c.Listeners[0].ProxyTrusted = []string{"127.0.0.1"}
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	silent := func(partial string) {
		t.Helper()
		raw, err := net.Dial("tcp", s.Addrs()[0])
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		io.WriteString(raw, partial)
		raw.SetReadDeadline(time.Now().Add(5 * time.Second))
		t0 := time.Now()
		_, err = io.ReadAll(raw)
		took := time.Since(t0)
		must(t, err == nil && took >= 250*time.Millisecond && took < 3*time.Second, "server closed after %v (err %v)", took, err)
	}
	silent("")   // nothing at all
	silent("PR") // the start of a signature, then nothing
	waitFor(t, func() bool { st := s.Stats(); return st.HandshakeTimeouts+st.ProxyHeaderFailures == 2 }, "failures not counted: %+v", s.Stats())
	st := s.Stats()
	must(t, st.HandshakeTimeouts == 2 && st.ProxyHeaderFailures == 0,
		"silent clients counted as %d timeouts and %d PROXY header failures, want 2 and 0", st.HandshakeTimeouts, st.ProxyHeaderFailures)
	time.Sleep(50 * time.Millisecond)
	must(t, len(logs.lines("PROXY header")) == 0, "a silent client drew the PROXY header warning: %q", logs.lines("PROXY header"))

	// A TLS client that sends no header still fails for its header.
	if c, err := tls.Dial("tcp", s.Addrs()[0], client("localhost", cert)); err == nil {
		c.Close()
		t.Fatal("handshake without a PROXY header succeeded")
	}
	waitFor(t, func() bool { return s.Stats().ProxyHeaderFailures == 1 }, "no PROXY header failure counted: %+v", s.Stats())
	must(t, s.Stats().HandshakeTimeouts == 2, "timeouts: %+v", s.Stats())
}
