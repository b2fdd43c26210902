package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
	"github.com/tlsfarm/tlsfarm/ticket"
)

// Defaults for the fields of Config, and the upstream dial timeout.
const (
	defaultHandshakeTimeout = 10 * time.Second
	defaultIdleTimeout      = 2 * time.Minute
	defaultDialTimeout      = 10 * time.Second
)

// A Config configures a Server. Cache is required; zero values elsewhere
// mean the defaults.
type Config struct {
	// Node names this server in the built-in upstream's facts.
	Node string

	// Cache is the session cache every listener resumes sessions from.
	Cache *session.Cache

	// Ring, if set, supplies the session ticket keys of every tls.Config
	// the server uses (needed in the cache's Stateless and Mixed modes).
	Ring *ticket.Ring

	// Listeners are the addresses the server listens on, each with its
	// certificates and upstream. At least one is required.
	Listeners []Listener

	// HandshakeTimeout bounds each handshake, PROXY header included
	// (default 10s). Over HTTP/3 it bounds the whole handshake too, and a
	// handshake also ends once no packet has come from the client for half
	// this long (quic-go's HandshakeIdleTimeout).
	HandshakeTimeout time.Duration

	// IdleTimeout closes a TCP passthrough connection, or one an HTTP
	// upstream switched to another protocol (a WebSocket; over HTTP/2 and
	// HTTP/3, its stream), on which nothing has moved either way for this
	// long, and an HTTP connection that has waited this long for its next
	// request or for a request's headers (default 2m). Reload does not
	// change it.
	IdleTimeout time.Duration

	// MaxConnections bounds the open connections of each listener; at the
	// bound, the listener stops accepting until one closes. Zero means no
	// bound. Reload does not change it.
	MaxConnections int

	// MaxWebSocketsPerConnection bounds the WebSockets that one HTTP/2 or
	// HTTP/3 connection may have open at once, each with an upstream
	// connection of its own (default 16; negative: no bound). A WebSocket
	// asked for beyond it gets 429 Too Many Requests and does not reach
	// the upstream. The WebSockets of a listener's HTTP/2 and HTTP/3
	// connections together are bounded by MaxConnections as well (503
	// beyond it), as its HTTP/1.1 WebSockets are by their connections.
	// Reload changes it for the WebSockets opened from then on.
	MaxWebSocketsPerConnection int

	// ExposeSessionID adds the session ID issued on each connection to the
	// built-in upstream's facts. For tests only: see Facts.SessionID.
	ExposeSessionID bool

	// Logger receives the server's log lines (default slog.Default()).
	Logger *slog.Logger

	// HTTP/3 (see Listener.HTTP3 and docs/quic.md).

	// AntiReplay decides whether a session may carry 0-RTT early data on
	// a listener with EarlyData (see AntiReplay), each call bounded by one
	// second; farm.Node.Strike decides for the whole farm. If nil, a register in this process's memory
	// decides, which is only right for a server that is alone.
	AntiReplay AntiReplay

	// EarlyDataWindow is how old a session may be (since its ticket was
	// issued) and still carry early data (default 10m).
	// The anti-replay record of a session lasts until its window ends,
	// plus EarlyDataSkew (default 5s) for the clock
	// differences between servers.
	EarlyDataWindow, EarlyDataSkew time.Duration

	// QUICTokenKey and QUICStatelessResetKey are the keys of QUIC address
	// validation tokens and stateless resets. Every server of a farm must
	// use the same (farm.DeriveQUICKeys); if nil, the server draws its own.
	QUICTokenKey, QUICStatelessResetKey *[32]byte

	// QUICValidateAddresses makes every QUIC client prove its address
	// (RFC 9000 §8.1) before the server does any handshake work: with a
	// token from an earlier connection to any server sharing
	// QUICTokenKey, or else with a Retry, which costs a round trip.
	QUICValidateAddresses bool
}

// A Listener configures one listening address.
type Listener struct {
	// Address is the host:port to listen on. Reload does not change it.
	Address string

	// Certificates are served by server name; the first is served when no
	// certificate's names match. At least one is required.
	Certificates []Certificate

	// MinVersion and MaxVersion bound the TLS versions (zero: crypto/tls's
	// defaults).
	MinVersion, MaxVersion uint16

	// NextProtos are the ALPN protocols offered, in order of preference.
	NextProtos []string

	// Upstream is "builtin" (or empty), an http:// or https:// URL, or
	// tcp://host:port; see the package documentation. Dialing it times out
	// after 10 seconds.
	Upstream string

	// ProxyProtocol makes every connection start with a PROXY protocol
	// header (v1 or v2), whose source address then stands for the client.
	// It needs ProxyTrusted, the addresses or CIDR ranges of the balancers
	// allowed to send one (New refuses an empty list: "0.0.0.0/0" and
	// "::/0" trust every sender, explicitly). Only connections from them
	// are accepted, and they must send a header; others are closed and
	// counted (Stats.ProxyUntrusted). The header is read within the
	// handshake timeout. Reload does not change either.
	ProxyProtocol bool
	ProxyTrusted  []string

	// HTTP3 serves HTTP/3 (QUIC) on the UDP port of Address as well, with
	// the same certificates, session cache, ticket keys and (HTTP)
	// upstream, and advertises it with an Alt-Svc header on the TCP
	// listener's responses. With port 0 in Address, a port whose TCP and
	// UDP numbers are both free is chosen. Reload does not change it.
	HTTP3 bool

	// EarlyData accepts 0-RTT early data on the HTTP/3 listener, once per
	// session (see Config.AntiReplay). Only GET, HEAD and OPTIONS are
	// served from early data, marked with EarlyDataHeader; other requests
	// get 425 Too Early. Reload does not change it.
	EarlyData bool

	// EarlyDataTrusted lists the addresses or CIDR ranges of the
	// intermediaries (a CDN that accepts 0-RTT itself) whose
	// EarlyDataHeader is kept and sent upstream, as RFC 8470 §5.1 asks of
	// an intermediary; it is removed from everyone else's requests. The
	// address judged is the request's client address: with ProxyProtocol,
	// the source address of the PROXY header (from a ProxyTrusted
	// balancer), not the balancer's; otherwise the connection's peer.
	// A kept header is sent as one field "Early-Data: 1", whatever its
	// value and however many its fields; the upstream decides whether to
	// answer 425 Too Early (the node refuses no method for it, over TCP
	// or, once the handshake has completed, over HTTP/3). Empty (the
	// default) keeps none. Reload changes it, for requests from then on.
	EarlyDataTrusted []string
}

// A Certificate is served for a set of server names.
type Certificate struct {
	// Names are server names (SNI), such as "example.com" or
	// "*.example.com", in lower case. If empty, the DNS names of the leaf
	// certificate are used.
	Names []string

	// Certificate is the certificate chain and private key served.
	Certificate *tls.Certificate
}

// A Server terminates TLS on its listeners. Make one with New, start it with
// Start, and stop it with Shutdown.
type Server struct {
	cache *session.Cache
	ring  *ticket.Ring
	log   *slog.Logger
	node  string
	idle  time.Duration
	max   int

	handshakeTimeout atomic.Int64 // time.Duration
	expose           atomic.Bool
	maxWS            atomic.Int64 // Config.MaxWebSocketsPerConnection; <= 0: no bound

	listeners []*listener
	stats     counters
	ws        wsCounters
	warn      *warner // rate-limited warn lines for repeated failures
	quic      quicCounters

	// HTTP/3
	antiReplay    AntiReplay
	earlyWindow   time.Duration
	earlySkew     time.Duration
	quicKeys      struct{ TokenKey, StatelessResetKey [32]byte }
	validateAddrs bool

	mu      sync.Mutex
	conns   map[*conn]struct{}
	shaking sync.WaitGroup     // connections not yet through their handshake and handed on
	fresh   map[*conn]struct{} // handed to an HTTP server, no request served yet
	drained chan struct{}      // closed when conns empties during shutdown
	started bool
	closing bool
	wg      sync.WaitGroup // accept loops and HTTP servers
}

// New returns a server for cfg. It checks the configuration and builds
// each listener's TLS configuration and upstream, but listens on nothing
// until Start.
func New(cfg Config) (*Server, error) {
	if cfg.Cache == nil {
		return nil, errors.New("proxy: Config.Cache is required")
	}
	if len(cfg.Listeners) == 0 {
		return nil, errors.New("proxy: no listener")
	}
	for i, l := range cfg.Listeners {
		if l.ProxyProtocol && len(l.ProxyTrusted) == 0 {
			return nil, fmt.Errorf("proxy: listener %d (%s): ProxyProtocol needs ProxyTrusted: without it any client could claim any address (list 0.0.0.0/0 and ::/0 to trust every sender)", i, l.Address)
		}
	}
	cfg.setDefaults()
	s := &Server{
		cache: cfg.Cache,
		ring:  cfg.Ring,
		log:   cfg.Logger,
		node:  cfg.Node,
		idle:  cfg.IdleTimeout,
		max:   cfg.MaxConnections,
		conns: map[*conn]struct{}{},
		fresh: map[*conn]struct{}{},
	}
	s.warn = newWarner(s.log)
	s.handshakeTimeout.Store(int64(cfg.HandshakeTimeout))
	s.expose.Store(cfg.ExposeSessionID)
	s.maxWS.Store(int64(cfg.MaxWebSocketsPerConnection))
	s.setQUIC(cfg)
	for _, lc := range cfg.Listeners {
		l, err := s.newListener(lc)
		if err != nil {
			s.release()
			return nil, err
		}
		s.listeners = append(s.listeners, l)
	}
	return s, nil
}

func (cfg *Config) setDefaults() {
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = defaultHandshakeTimeout
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = defaultIdleTimeout
	}
	if cfg.MaxWebSocketsPerConnection == 0 {
		cfg.MaxWebSocketsPerConnection = defaultMaxWebSocketsPerConnection
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
}

// Start listens on every listener's address and starts serving. If one
// address cannot be bound, Start closes those it bound and returns an
// error naming the listener by its index in Config.Listeners.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("proxy: server already started")
	}
	for i, l := range s.listeners {
		if err := l.listen(); err != nil {
			for _, done := range s.listeners[:i] {
				done.ln.Close()
				if done.quic != nil {
					done.quic.closeSocket()
				}
			}
			return fmt.Errorf("listeners[%d].address: %w", i, err)
		}
	}
	s.started = true
	for _, l := range s.listeners {
		s.wg.Add(2)
		go l.acceptLoop()
		go l.serveHTTP()
		if l.quic != nil {
			l.quic.wg.Add(1)
			go l.quic.serve()
		}
	}
	return nil
}

// Addrs returns the addresses the listeners are bound to, in order (the
// configured ones before Start).
func (s *Server) Addrs() []string {
	out := make([]string, len(s.listeners))
	for i, l := range s.listeners {
		out[i] = l.addr()
	}
	return out
}

// Ready returns nil while every listener is accepting connections, and an
// error before Start and from the start of Shutdown (ErrShuttingDown).
func (s *Server) Ready() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case !s.started:
		return errors.New("listeners not started")
	case s.closing:
		return ErrShuttingDown
	}
	return nil
}

// ErrShuttingDown is what Ready returns from the start of Shutdown: the
// listeners accept nothing more, and the connections they hold finish.
var ErrShuttingDown = errors.New("shutting down")

// Shutdown stops accepting connections and waits for open ones to finish:
// HTTP connections finish their requests in flight, passthrough
// connections their streams. When ctx is done it closes what is left and
// returns ctx.Err(). The session cache and ticket keys are not touched.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return errors.New("proxy: shutdown already called")
	}
	s.closing = true
	s.drained = make(chan struct{})
	if len(s.conns) == 0 {
		close(s.drained)
	}
	started := s.started
	s.mu.Unlock()

	for _, l := range s.listeners {
		close(l.stop)
		if started {
			l.ln.Close()
		}
	}
	// Connections accepted before now finish their handshakes (within
	// the handshake timeout) and reach their upstreams before the HTTP
	// servers stop taking connections.
	shaken := make(chan struct{})
	go func() {
		s.shaking.Wait()
		close(shaken)
	}()
	select {
	case <-shaken:
	case <-ctx.Done():
	}
	// net/http drops a request that arrives once its Shutdown has begun:
	// the connections handed to it send theirs first, each within the
	// handshake timeout.
	s.waitFresh(ctx, time.Duration(s.handshakeTimeout.Load()))
	for _, l := range s.listeners {
		l.handoff.Close()
	}
	var httpWG sync.WaitGroup
	var quicCut atomic.Bool // HTTP/3 connections closed at ctx's end
	for _, l := range s.listeners {
		httpWG.Add(1)
		go func() {
			defer httpWG.Done()
			l.http.Shutdown(ctx)
		}()
		if l.quic != nil {
			httpWG.Add(1)
			go func() {
				defer httpWG.Done()
				if l.quic.shutdown(ctx) != nil {
					quicCut.Store(true)
				}
			}()
		}
	}
	httpWG.Wait()

	var err error
	if quicCut.Load() {
		err = ctx.Err()
	}
	select {
	case <-s.drained:
	case <-ctx.Done():
		err = ctx.Err()
		s.mu.Lock()
		for c := range s.conns {
			c.Conn.Close()
		}
		s.mu.Unlock()
		for _, l := range s.listeners {
			l.http.Close()
		}
	}
	s.wg.Wait()
	s.release()
	return err
}

// release unregisters every listener's configs from the ticket key ring.
func (s *Server) release() {
	for _, l := range s.listeners {
		l.release()
	}
}

// track registers a new connection, to go through its handshake (see
// Server.shaking); it reports false during shutdown.
func (s *Server) track(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.conns[c] = struct{}{}
	s.shaking.Add(1)
	return true
}

// handedOff records that c is handed to an HTTP server (done false) or
// that its first request has reached the handler, or it has gone (done
// true).
func (s *Server) handedOff(c *conn, done bool) {
	if done && !c.fresh.Swap(false) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if done {
		delete(s.fresh, c)
	} else {
		c.fresh.Store(true)
		s.fresh[c] = struct{}{}
	}
}

// waitFresh waits, at most bound or until ctx ends, for every connection
// handed to an HTTP server to have had its first request served (or to
// have gone).
func (s *Server) waitFresh(ctx context.Context, bound time.Duration) {
	deadline := time.NewTimer(bound)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		s.mu.Lock()
		n := len(s.fresh)
		s.mu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			return
		case <-tick.C:
		}
	}
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
	if s.closing && len(s.conns) == 0 {
		select {
		case <-s.drained:
		default:
			close(s.drained)
		}
	}
}
