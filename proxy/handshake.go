package proxy

import (
	"crypto/tls"
	"errors"
	"os"
	"strings"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// handle completes the handshake of c and hands the connection to its
// upstream.
func (l *listener) handle(c *conn) {
	s := l.s
	shaking := true
	handed := func() {
		if shaking {
			shaking = false
			s.shaking.Done()
		}
	}
	defer handed()
	tc := tls.Server(c, l.base)
	deadline := time.Now().Add(time.Duration(s.handshakeTimeout.Load()))
	c.SetDeadline(deadline)
	if err := tc.Handshake(); err != nil {
		reason := failureReason(err, l.cfg.ProxyProtocol)
		if reason == failProxyHeader && errors.Is(err, proxyproto.ErrNoProxyProtocol) && !time.Now().Before(deadline) {
			// The PROXY protocol library reports a wait for the
			// header that reached the deadline as a missing header.
			// Nothing, or not enough to tell, came within the
			// handshake timeout: the same silence without the
			// PROXY protocol is a timeout, and need not be the
			// balancer's doing (a client it passed on may be the
			// silent one).
			reason = failTimeout
		}
		s.stats.failures[reason].Add(1)
		client := addrString(c.RemoteAddr())
		s.log.Debug("handshake failed", "listener", l.addr(), "client", client, "reason", reason.String(), "err", err)
		s.warn.note("handshake_"+reason.String(), reason.warning(), client, "listener", l.addr(), "last_err", err.Error())
		tc.Close()
		return
	}
	c.SetDeadline(time.Time{})
	s.cache.HandshakeComplete(tc)
	cs := tc.ConnectionState()
	s.stats.handshake(cs.Version, cs.DidResume)

	r := l.route.Load()
	if r.tcp != "" {
		handed()
		l.passthrough(tc, r.tcp)
		return
	}
	c.idleWrites.Store(true)
	s.handedOff(c, false)
	if !l.handoff.push(tc) {
		s.handedOff(c, true)
		tc.Close() // the shutdown's drain timeout has passed
	}
}

// A failure is why a handshake failed, for Stats.
type failure uint8

const (
	failTLS         failure = iota // the TLS handshake itself failed
	failTimeout                    // the client took longer than the handshake timeout, PROXY header included
	failProxyHeader                // a missing or malformed PROXY header
	numFailures
)

func (f failure) String() string {
	switch f {
	case failTimeout:
		return "timeout"
	case failProxyHeader:
		return "proxy_header"
	}
	return "tls"
}

// warning is the rate-limited warn line for failures of this kind.
func (f failure) warning() string {
	switch f {
	case failTimeout:
		return "handshakes timing out: clients did not finish within limits.handshake_timeout"
	case failProxyHeader:
		return "handshakes failing: no valid PROXY header (is the balancer in front sending one, e.g. HAProxy send-proxy?)"
	}
	return "TLS handshakes failing"
}

// failureReason classifies err, the error of a handshake on a listener
// with the PROXY protocol on or off. The PROXY protocol library's errors
// begin with its prefix; crypto/tls's never do, but some of them quote what
// the client sent (its ALPN protocols), so the prefix is looked for only at
// the start, and only where a PROXY header is read at all.
func failureReason(err error, proxyProtocol bool) failure {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return failTimeout
	case !proxyProtocol:
	case errors.Is(err, proxyproto.ErrNoProxyProtocol), errors.Is(err, proxyproto.ErrInvalidUpstream),
		strings.HasPrefix(err.Error(), "proxyproto:"): // the library's errors share the prefix
		return failProxyHeader
	}
	return failTLS
}
