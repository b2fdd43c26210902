package proxy

import (
	"crypto/tls"
	"log/slog"
	"testing"
	"time"
)

// TestClientALPNDoesNotPassForProxyHeaderFailure makes handshakes fail on
// ALPN with a protocol name a client chose to look like the PROXY protocol
// library's errors ("proxyproto: ..."), on a listener without the PROXY
// protocol: crypto/tls quotes the client's names in its error, and the
// failure must still count as a TLS failure, not as a missing PROXY header
// whose warning sends operators to their balancer.
func TestClientALPNDoesNotPassForProxyHeaderFailure(t *testing.T) {
	cert := mustSelfSigned(t, "localhost")
	var logs logBuffer
	s, _ := start(t, cert, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	cfg := client("localhost", cert)
	cfg.NextProtos = []string{"proxyproto: proxy protocol signature not present"}
	for range 3 {
		if c, err := tls.Dial("tcp", s.Addrs()[0], cfg); err == nil {
			c.Close()
			t.Fatal("handshake with an ALPN protocol the listener does not offer succeeded")
		}
	}
	waitFor(t, func() bool { st := s.Stats(); return st.HandshakeErrors+st.ProxyHeaderFailures == 3 }, "failures not counted: %+v", s.Stats())
	st := s.Stats()
	must(t, st.HandshakeErrors == 3 && st.ProxyHeaderFailures == 0,
		"ALPN failures counted as %d TLS errors and %d PROXY header failures, want 3 and 0", st.HandshakeErrors, st.ProxyHeaderFailures)
	time.Sleep(50 * time.Millisecond)
	must(t, len(logs.lines("PROXY header")) == 0, "a client's ALPN drew the PROXY header warning: %q", logs.lines("PROXY header"))
}
