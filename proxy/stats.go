package proxy

import (
	"crypto/tls"
	"sync/atomic"
)

// Stats are a server's counters since New.
type Stats struct {
	// Handshakes counts completed handshakes by TLS version and by full or
	// resumed; versions with no handshake are left out.
	Handshakes []HandshakeCount

	// Failed handshakes, by reason.
	HandshakeTimeouts    uint64 // the client did not finish within the handshake timeout, PROXY header included
	HandshakeErrors      uint64 // the TLS handshake failed (bad hello, no shared version, ...)
	ProxyHeaderFailures  uint64 // the connection began with no PROXY header, or a malformed one (silence until the timeout is a timeout)
	ProxyUntrusted       uint64 // connections refused: the sender is not in Listener.ProxyTrusted
	Accepted             uint64 // connections accepted
	Open                 int    // TCP connections open now (QUICStats.Open: HTTP/3's)
	UpstreamErrors       uint64 // requests or streams the upstream could not take
	UpstreamHTTPRequests uint64 // requests proxied to an http:// or https:// upstream
}

// A HandshakeCount counts the handshakes of one TLS version, full or
// resumed.
type HandshakeCount struct {
	Version uint16 // tls.VersionTLS12, ...
	Resumed bool   // whether these handshakes resumed a session
	Count   uint64 // completed handshakes
}

// counters are the server's atomics.
type counters struct {
	handshakes [4][2]atomic.Uint64 // [version - TLS 1.0][resumed]
	failures   [numFailures]atomic.Uint64
	accepted   atomic.Uint64
	upstream   atomic.Uint64
	untrusted  atomic.Uint64
	requests   atomic.Uint64

	// Early-Data header fields that requests arrived with: kept (a
	// trusted intermediary's) and removed (anyone else's).
	earlyKept, earlyRemoved atomic.Uint64
}

func (c *counters) handshake(version uint16, resumed bool) {
	i := int(version) - tls.VersionTLS10
	if i < 0 || i >= len(c.handshakes) {
		return
	}
	r := 0
	if resumed {
		r = 1
	}
	c.handshakes[i][r].Add(1)
}

// Stats returns a snapshot of the server's counters.
func (s *Server) Stats() Stats {
	st := Stats{
		HandshakeTimeouts:    s.stats.failures[failTimeout].Load(),
		HandshakeErrors:      s.stats.failures[failTLS].Load(),
		ProxyHeaderFailures:  s.stats.failures[failProxyHeader].Load(),
		ProxyUntrusted:       s.stats.untrusted.Load(),
		Accepted:             s.stats.accepted.Load(),
		UpstreamErrors:       s.stats.upstream.Load(),
		UpstreamHTTPRequests: s.stats.requests.Load(),
	}
	for i := range s.stats.handshakes {
		for r := range 2 {
			if n := s.stats.handshakes[i][r].Load(); n > 0 {
				st.Handshakes = append(st.Handshakes, HandshakeCount{
					Version: uint16(tls.VersionTLS10 + i), Resumed: r == 1, Count: n,
				})
			}
		}
	}
	s.mu.Lock()
	st.Open = len(s.conns)
	s.mu.Unlock()
	return st
}
