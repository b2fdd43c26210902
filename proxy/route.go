package proxy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// A route is the part of a listener that Reload replaces: the TLS
// configuration handshakes are cloned from, and the upstream.
type route struct {
	tls   *tls.Config
	unreg func() // unregisters tls from the ring

	quic      *tls.Config // for HTTP/3, with Listener.HTTP3
	unregQUIC func()

	handler   http.Handler    // HTTP upstreams (builtin, http, https)
	transport *http.Transport // of the reverse proxy, if any
	target    *url.URL        // of the reverse proxy, if any
	tcp       string          // tcp:// upstream address
	upstream  string          // as configured, for logs

	earlyTrust earlyTrust // Listener.EarlyDataTrusted, parsed
}

func (s *Server) newRoute(cfg Listener) (*route, error) {
	certs, err := newCertSet(cfg.Certificates)
	if err != nil {
		return nil, err
	}
	trust, err := parseEarlyTrust(cfg.EarlyDataTrusted)
	if err != nil {
		return nil, err
	}
	r := &route{
		tls: &tls.Config{
			GetCertificate: certs.get,
			MinVersion:     cfg.MinVersion,
			MaxVersion:     cfg.MaxVersion,
			NextProtos:     cfg.NextProtos,
		},
		upstream:   cfg.Upstream,
		earlyTrust: trust,
	}
	switch up := cfg.Upstream; {
	case up == "" || up == "builtin":
		r.handler = &facts{s: s}
	case strings.HasPrefix(up, "tcp://"):
		u, err := url.Parse(up)
		if err != nil {
			return nil, errors.New("upstream: a tcp:// URL that does not parse")
		}
		if _, _, err := net.SplitHostPort(u.Host); err != nil {
			return nil, fmt.Errorf("upstream %q: %w", u.Redacted(), err)
		}
		r.tcp = u.Host
	case strings.HasPrefix(up, "http://"), strings.HasPrefix(up, "https://"):
		u, err := url.Parse(up)
		if err != nil || u.Host == "" {
			return nil, fmt.Errorf("upstream %q is not an http:// or https:// URL with a host", shownUpstream(up))
		}
		r.handler, r.transport = s.reverseProxy(u)
		r.target = u
	default:
		return nil, fmt.Errorf("upstream %q is not builtin, http://, https:// or tcp://", shownUpstream(up))
	}
	if s.ring != nil {
		r.unreg = s.ring.Register(r.tls)
	}
	s.quicRoute(r, cfg)
	return r, nil
}

// release unregisters the route's config from the ring and lets the
// reverse proxy's idle upstream connections go.
func (r *route) release() {
	if r.unreg != nil {
		r.unreg()
	}
	if r.unregQUIC != nil {
		r.unregQUIC()
	}
	if r.transport != nil {
		r.transport.CloseIdleConnections()
	}
}

// Reload applies the reloadable settings of cfg: each listener's
// certificates, TLS versions, ALPN protocols, upstream and
// EarlyDataTrusted (for requests from then on), the handshake
// timeout, MaxWebSocketsPerConnection (for WebSockets opened from then on)
// and ExposeSessionID. cfg.Listeners must match the server's
// listeners one to one, in order; their addresses and PROXY protocol
// settings, IdleTimeout and MaxConnections keep the values the server was
// made with. Open connections, the session cache and the ticket keys are
// not touched; each new handshake uses the new settings. If any part of
// cfg is invalid, Reload changes nothing and returns an error.
func (s *Server) Reload(cfg Config) error {
	if len(cfg.Listeners) != len(s.listeners) {
		return fmt.Errorf("proxy: reload has %d listeners, the server %d", len(cfg.Listeners), len(s.listeners))
	}
	cfg.setDefaults()
	routes := make([]*route, len(s.listeners))
	for i, lc := range cfg.Listeners {
		lc.HTTP3 = s.listeners[i].quic != nil // fixed at New
		r, err := s.newRoute(lc)
		if err != nil {
			for _, done := range routes[:i] {
				done.release()
			}
			return fmt.Errorf("listener %s: %w", s.listeners[i].address, err)
		}
		routes[i] = r
	}
	for i, l := range s.listeners {
		l.route.Swap(routes[i]).release()
	}
	s.handshakeTimeout.Store(int64(cfg.HandshakeTimeout))
	s.expose.Store(cfg.ExposeSessionID)
	s.maxWS.Store(int64(cfg.MaxWebSocketsPerConnection))
	return nil
}

// shownUpstream returns up for an error message: with any password masked
// (url.URL.Redacted), or, if it does not parse, its scheme only.
func shownUpstream(up string) string {
	if u, err := url.Parse(up); err == nil {
		return u.Redacted()
	}
	scheme, _, _ := strings.Cut(up, "://")
	return scheme + "://..."
}
