package proxy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"syscall"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// maxHeaderWait is the PROXY protocol library's own bound on the wait for a
// header: longer than any handshake timeout, so that the handshake's
// deadline decides.
const maxHeaderWait = 100 * 365 * 24 * time.Hour

// A listener is one listening address with its TLS configuration and
// upstream.
type listener struct {
	s       *Server
	address string
	cfg     Listener

	base  *tls.Config // the config handshakes start with; constant
	unreg func()      // unregisters base from the ring
	route atomic.Pointer[route]

	ln      net.Listener
	sem     chan struct{} // one slot per open connection, when bounded
	stop    chan struct{} // closed by Shutdown, with ln
	http    *http.Server
	handoff *handoffListener // handshaken HTTP connections, for http

	quic *quicListener // with Listener.HTTP3

	websockets atomic.Int64 // open over HTTP/2 and HTTP/3, when bounded (admitWebSocket)
}

func (s *Server) newListener(cfg Listener) (*listener, error) {
	l := &listener{s: s, address: cfg.Address, cfg: cfg, handoff: newHandoffListener(), stop: make(chan struct{})}
	if s.max > 0 {
		l.sem = make(chan struct{}, s.max)
	}
	r, err := s.newRoute(cfg)
	if err != nil {
		return nil, fmt.Errorf("listener %s: %w", cfg.Address, err)
	}
	l.route.Store(r)

	l.base = s.handshakeConfig(func(*tls.ClientHelloInfo) (*tls.Config, error) {
		return l.route.Load().tls, nil
	}, l.captureTicket)
	if s.ring != nil {
		l.unreg = s.ring.Register(l.base)
	}
	l.http = &http.Server{
		Handler:           http.HandlerFunc(l.serveRequest),
		ReadHeaderTimeout: s.idle,
		IdleTimeout:       s.idle,
		// WriteTimeout bounds the answers net/http writes itself (to
		// requests it refuses). serveRequest replaces it with the
		// bounds of boundWrites; on an HTTP/2 stream it keeps the
		// stream's write deadline in place from its start to its end
		// (see idleWriter.none).
		WriteTimeout: s.idle,
		ConnContext:  withConn,
		ConnState: func(nc net.Conn, st http.ConnState) {
			// A connection's first request counts in serveRequest:
			// an HTTP/1 connection is active once it has read a
			// request, before net/http decides to serve it, and an
			// HTTP/2 one turns idle as soon as it is set up, before
			// any request. Only its end counts here.
			if tc, ok := nc.(*tls.Conn); ok && (st == http.StateClosed || st == http.StateHijacked) {
				if c, ok := tc.NetConn().(*conn); ok {
					s.handedOff(c, true)
					// A switched connection has the idle watch
					// of both directions (boundUpgrade): a
					// write that waits while the other way
					// moves is not idle.
					c.idleWrites.Store(false)
				}
			}
		},
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	if cfg.HTTP3 {
		l.quic = l.newQUIC()
	}
	return l, nil
}

// captureTicket makes the per-handshake config child remember the ticket
// issued on the connection, for Config.ExposeSessionID. It costs nothing
// while that is off.
func (l *listener) captureTicket(hello *tls.ClientHelloInfo, child *tls.Config) {
	c, ok := hello.Conn.(*conn)
	if !ok || !l.s.expose.Load() {
		return
	}
	wrap := child.WrapSession
	child.WrapSession = func(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
		t, err := wrap(cs, ss)
		if err == nil {
			c.ticket.Store(&t)
		}
		return t, err
	}
}

// anyPortTries bounds how many ephemeral TCP ports listen tries when the
// listener asks for any port (port 0) and serves HTTP/3 too, whose UDP
// socket must have the same number: another process may hold the UDP
// twin of the port the kernel picked.
const anyPortTries = 16

// netListenTCP is net.Listen("tcp", ...); tests replace it.
var netListenTCP = func(address string) (net.Listener, error) { return net.Listen("tcp", address) }

func (l *listener) listen() error {
	var trust proxyproto.ConnPolicyFunc
	if l.cfg.ProxyProtocol {
		var err error
		if trust, err = proxyproto.TrustProxyHeaderFromRanges(l.cfg.ProxyTrusted); err != nil {
			return err
		}
	}
	ln, err := l.listenTCP()
	if err != nil {
		return err
	}
	if l.cfg.ProxyProtocol {
		pl := &proxyproto.Listener{
			Listener: ln,
			// The header is read within the handshake's deadline, set
			// on each connection from the handshake timeout in force
			// (Reload changes it); the library's own wait, shortened
			// to that deadline, must not be shorter.
			ReadHeaderTimeout: maxHeaderWait,
			ConnPolicy: func(o proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) {
				p, err := trust(o)
				if err != nil {
					// The library closes the connection and accepts on.
					l.s.stats.untrusted.Add(1)
					l.s.warn.note("proxy_untrusted", "connections refused: the sender is not in proxy_protocol.trusted", addrString(o.Upstream), "listener", l.address)
				}
				return p, err
			},
		}
		l.ln = pl
	} else {
		l.ln = ln
	}
	l.handoff.addr = ln.Addr()
	return nil
}

// listenTCP opens the TCP listener and, with HTTP/3, its UDP twin. For
// any port (port 0), a kernel-chosen port whose UDP twin is taken is
// given back and another tried, up to anyPortTries times.
func (l *listener) listenTCP() (net.Listener, error) {
	_, port, _ := net.SplitHostPort(l.address)
	tries := 1
	if l.quic != nil && port == "0" {
		tries = anyPortTries
	}
	for i := 1; ; i++ {
		ln, err := netListenTCP(l.address)
		if err != nil {
			return nil, err
		}
		if l.quic == nil {
			return ln, nil
		}
		err = l.quic.listen(ln.Addr())
		if err == nil {
			return ln, nil
		}
		ln.Close()
		if i >= tries || !errors.Is(err, syscall.EADDRINUSE) {
			return nil, err
		}
	}
}

func (l *listener) addr() string {
	if l.ln != nil {
		return l.ln.Addr().String()
	}
	return l.address
}

// acceptLoop accepts connections until the listener is closed, each in a
// goroutine of its own.
func (l *listener) acceptLoop() {
	defer l.s.wg.Done()
	var delay time.Duration
	for {
		if l.sem != nil {
			// At the bound, wait for a slot or the shutdown: a slot
			// may be held past the drain timeout (a passthrough
			// connection dialing an upstream that does not answer
			// frees it only when the dial gives up), and Shutdown
			// waits for this loop.
			select {
			case l.sem <- struct{}{}:
			case <-l.stop:
				return
			}
		}
		raw, err := l.ln.Accept()
		if err != nil {
			if l.sem != nil {
				<-l.sem
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			l.s.log.Warn("accept failed; retrying", "listener", l.address, "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		c := &conn{Conn: raw, l: l}
		if !l.s.track(c) {
			c.Close()
			continue
		}
		l.s.stats.accepted.Add(1)
		go l.handle(c)
	}
}

// serveHTTP serves the HTTP upstreams of the listener's connections.
func (l *listener) serveHTTP() {
	defer l.s.wg.Done()
	l.http.Serve(l.handoff)
}

// release unregisters the listener's configs from the ring.
func (l *listener) release() {
	if l.unreg != nil {
		l.unreg()
		l.unreg = nil
	}
	if r := l.route.Load(); r != nil {
		r.release()
	}
	if l.quic != nil {
		l.quic.release()
	}
}

// addrString returns a's text, or "" for nil.
func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}
