package proxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// EarlyDataHeader is the request header (RFC 8470) set to "1" on a request
// that the client sent in 0-RTT early data, for the upstream. A value sent
// by the client is removed from every request, unless the client is an
// intermediary in Listener.EarlyDataTrusted.
const EarlyDataHeader = "Early-Data"

// A quicListener serves HTTP/3 on UDP at the address of its TCP listener,
// with the same certificates, session cache, ticket keys and upstream.
type quicListener struct {
	l     *listener
	base  *tls.Config // the config QUIC handshakes start with; constant
	unreg func()

	udp    *net.UDPConn
	tr     *quic.Transport
	ln     *quic.EarlyListener
	h3     *http3.Server
	altSvc string // the Alt-Svc header for TCP responses

	ctx    context.Context // ends accepting
	cancel context.CancelFunc
	wg     sync.WaitGroup // the accept loop and each connection

	mu    sync.Mutex
	conns map[*quic.Conn]*quicConn // accepted, not yet closed

	open atomic.Int64 // connections from ConnContext to their end

	// draining is set when a shutdown begins: from then on, a
	// connection is closed once it has served no request for
	// quicShutdownLinger.
	draining atomic.Bool
}

// A quicConn is an accepted QUIC connection and the count of its requests
// being served.
type quicConn struct {
	c          *quic.Conn
	requests   atomic.Int64
	websockets atomic.Int32 // open on the connection (admitWebSocket)

	// last is when a request last began or ended (unix nanoseconds), for
	// the idle watchdog (watchIdle).
	last atomic.Int64
}

type quicConnKey struct{}

// quicShutdownLinger is how long a shutting-down listener leaves a
// connection that serves no request before closing it: time for a request
// the client sent before the GOAWAY to reach serveRequest, and for the
// last bytes of the last response to be acknowledged (a QUIC
// CONNECTION_CLOSE discards what is unsent). http3's own graceful
// shutdown leaves such a connection for the client to close, which a
// client may never do (quic-go's closes it only once its application has
// read each response to its end). As x/net/http2's goAwayTimeout.
const quicShutdownLinger = time.Second

// maxHTTP3HeaderBytes bounds an HTTP/3 request's HEADERS frame, and its
// header fields once decoded (RFC 9114 §4.2.2's size: names, values and 32
// bytes a field); beyond it the request gets 431. quic-go allocates a
// HEADERS frame's declared length before any of it arrives, on each of the
// 100 streams a client may open at once: with net/http's 1 MB default a
// client held 100 MB per connection for a few bytes sent. At 64 KiB (what
// AWS's load balancers allow for a request's headers) it is 6.4 MB.
const maxHTTP3HeaderBytes = 64 << 10

func (l *listener) newQUIC() *quicListener {
	s := l.s
	q := &quicListener{l: l, conns: map[*quic.Conn]*quicConn{}}
	q.ctx, q.cancel = context.WithCancel(context.Background())
	q.base = s.handshakeConfig(func(*tls.ClientHelloInfo) (*tls.Config, error) {
		if c := l.route.Load().quic; c != nil {
			return c, nil
		}
		return nil, errNoQUIC
	}, q.admitEarlyData)
	if s.ring != nil {
		q.unreg = s.ring.Register(q.base)
	}
	q.h3 = &http3.Server{
		Handler:        http.HandlerFunc(q.serveRequest),
		IdleTimeout:    s.idle,
		MaxHeaderBytes: maxHTTP3HeaderBytes,
		ConnContext: func(ctx context.Context, c *quic.Conn) context.Context {
			q.mu.Lock()
			qc := q.conns[c]
			q.mu.Unlock()
			if qc == nil { // not from serve; not expected
				qc = &quicConn{c: c}
			}
			ctx = context.WithValue(ctx, quicConnKey{}, qc)
			return context.WithValue(ctx, http.LocalAddrContextKey, c.LocalAddr())
		},
		// http3's own log lines about single clients are noise at any
		// level the daemon runs at.
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	return q
}

// quicRoute adds the HTTP/3 config to a route: the route's, with ALPN h3
// and TLS 1.3 only, registered with the ticket key ring.
func (s *Server) quicRoute(r *route, cfg Listener) {
	if !cfg.HTTP3 {
		return
	}
	r.quic = r.tls.Clone()
	r.quic.NextProtos = []string{http3.NextProtoH3}
	r.quic.MinVersion, r.quic.MaxVersion = tls.VersionTLS13, 0
	if s.ring != nil {
		r.unregQUIC = s.ring.Register(r.quic)
	}
}

// listen binds the UDP port of the TCP listener's address.
func (q *quicListener) listen(tcp net.Addr) error {
	ta, ok := tcp.(*net.TCPAddr)
	if !ok {
		return fmt.Errorf("http3: listener address %v is not TCP", tcp)
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: ta.IP, Port: ta.Port, Zone: ta.Zone})
	if err != nil {
		return fmt.Errorf("http3: %w", err)
	}
	s := q.l.s
	tk, rk := quic.TokenGeneratorKey(s.quicKeys.TokenKey), quic.StatelessResetKey(s.quicKeys.StatelessResetKey)
	q.udp = udp
	q.tr = &quic.Transport{
		Conn:              udp,
		TokenGeneratorKey: &tk,
		StatelessResetKey: &rk,
		ConnContext: func(ctx context.Context, _ *quic.ClientInfo) (context.Context, error) {
			// Config.MaxConnections bounds the QUIC connections of
			// the listener too; at the bound, new ones are refused
			// (the client can fall back to TCP). quic-go ends ctx
			// when the connection ends, handshake failures included.
			if n := q.open.Add(1); s.max > 0 && n > int64(s.max) {
				q.open.Add(-1)
				return nil, errQUICFull
			}
			context.AfterFunc(ctx, func() { q.open.Add(-1) })
			return context.WithValue(ctx, quicStateKey{}, &quicState{}), nil
		},
	}
	if s.validateAddrs {
		q.tr.VerifySourceAddress = func(net.Addr) bool { return true }
	}
	qc := &quic.Config{
		Allow0RTT:            q.l.cfg.EarlyData,
		HandshakeIdleTimeout: quicHandshakeIdle(time.Duration(s.handshakeTimeout.Load())),
		MaxIdleTimeout:       s.idle,
		// The server pings, so that a client waiting for a slow
		// upstream keeps its connection, as over TCP: QUIC's idle
		// timeout then ends only connections whose peer has gone, and
		// h3's IdleTimeout those without a request.
		KeepAlivePeriod: s.idle / 2,
	}
	// Each connection's handshake is bounded by the handshake timeout of
	// the moment (Reload changes it), as over TCP.
	qc.GetConfigForClient = func(*quic.ClientInfo) (*quic.Config, error) {
		c := qc.Clone()
		c.GetConfigForClient = nil
		c.HandshakeIdleTimeout = quicHandshakeIdle(time.Duration(s.handshakeTimeout.Load()))
		return c, nil
	}
	q.ln, err = q.tr.ListenEarly(q.base, qc)
	if err != nil {
		q.tr.Close()
		udp.Close()
		return fmt.Errorf("http3: %w", err)
	}
	q.altSvc = fmt.Sprintf(`%s=":%d"; ma=86400`, http3.NextProtoH3, ta.Port)
	return nil
}

// quicHandshakeIdle returns the quic-go HandshakeIdleTimeout that bounds a
// whole QUIC handshake by timeout, as over TCP: quic-go ends a handshake
// once no packet has come from the client for HandshakeIdleTimeout, and in
// any case at twice it (quic-go's Config.handshakeTimeout). A client that
// keeps sending, and never finishes, is cut at timeout; a silent one at
// half of it.
func quicHandshakeIdle(timeout time.Duration) time.Duration {
	return max(timeout/2, 1) // 0 would be quic-go's default, 5 s
}

// serve accepts QUIC connections until shutdown.
func (q *quicListener) serve() {
	defer q.wg.Done()
	for {
		c, err := q.ln.Accept(q.ctx)
		if err != nil {
			return
		}
		qc := &quicConn{c: c}
		q.mu.Lock()
		q.conns[c] = qc
		q.mu.Unlock()
		q.wg.Add(1)
		go func() {
			defer q.wg.Done()
			defer func() {
				q.mu.Lock()
				delete(q.conns, c)
				q.mu.Unlock()
			}()
			done := make(chan struct{})
			go func() {
				q.watch(c)
				close(done)
			}()
			stop := qc.watchIdle(q.l.s.idle)
			q.h3.ServeQUICConn(c)
			stop()
			<-done
		}()
	}
}

// watch counts the connection's handshake once it completes, and whether
// it accepted early data once it completes or ends.
func (q *quicListener) watch(c *quic.Conn) {
	complete := false
	select {
	case <-c.HandshakeComplete():
		complete = true
	case <-c.Context().Done():
		select {
		case <-c.HandshakeComplete():
			complete = true
		default:
		}
	}
	cs := c.ConnectionState()
	st := &q.l.s.quic
	switch {
	case !complete:
	case cs.TLS.DidResume:
		st.resumed.Add(1)
	default:
		st.full.Add(1)
	}
	qs, _ := c.Context().Value(quicStateKey{}).(*quicState)
	switch {
	case cs.Used0RTT:
		st.accepted.Add(1)
	case complete && qs != nil && qs.offered.Load() && qs.reason.Load() == 0:
		// Offered, and not refused by the anti-replay check: the session
		// was unknown, not resumable, or quic-go refused it (changed
		// transport parameters or settings).
		st.rejected[rejectOther].Add(1)
	}
}

// shutdown stops accepting, closes the connections still in their
// handshake, and lets the others finish their requests (http3 sends them
// GOAWAY) until ctx ends; then it closes what is left, returning
// ctx.Err(), and the socket. A connection is closed (H3_NO_ERROR) once
// it has served no request for quicShutdownLinger, if its client has not
// closed it by then (RFC 9114 §5.2 lets the server close it once the
// requests it accepted are done).
func (q *quicListener) shutdown(ctx context.Context) error {
	q.cancel()
	if q.ln != nil {
		q.ln.Close()
	}
	q.closeConns(false)
	q.drain()
	done := make(chan struct{})
	go func() {
		// Shutdown returns once every connection given to ServeQUICConn
		// has ended; it never closes them itself.
		q.h3.Shutdown(context.Background())
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		q.closeConns(true)
		<-done
	}
	q.wg.Wait()
	q.closeSocket()
	return err
}

// closeSocket closes the listener, the QUIC transport and its UDP socket.
func (q *quicListener) closeSocket() {
	if q.ln != nil {
		q.ln.Close()
	}
	if q.tr != nil {
		q.tr.Close()
		q.udp.Close()
	}
}

// closeConns closes the accepted connections whose handshake has not
// completed, or all of them.
func (q *quicListener) closeConns(all bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for c := range q.conns {
		select {
		case <-c.HandshakeComplete():
			if !all {
				continue
			}
		default:
		}
		c.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "shutting down")
	}
}

// drain makes each connection close once it has served no request for
// quicShutdownLinger: those serving none now, and the others when their
// last request ends.
func (q *quicListener) drain() {
	q.draining.Store(true)
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, qc := range q.conns {
		if qc.requests.Load() == 0 {
			qc.closeIfIdleIn(quicShutdownLinger)
		}
	}
}

// requestDone counts the end of a request on qc; after the last one, a
// draining listener's connection is closed (closeIfIdleIn).
func (q *quicListener) requestDone(qc *quicConn) {
	if qc.requests.Add(-1) == 0 && q.draining.Load() {
		qc.closeIfIdleIn(quicShutdownLinger)
	}
}

// watchIdle closes the connection, as http3's IdleTimeout would, once no
// request has been served on it for idle; it returns a func that stops
// watching. http3's own idle timer stops while any request stream is open,
// even one whose headers never come: quic-go reads a request's headers
// without a deadline, and the server's keep-alive pings, which the
// client's stack answers, keep QUIC's idle timeout from firing. So a
// client that opened a stream and sent a byte of it held the connection
// (and its place under MaxConnections) for ever. Over TCP,
// ReadHeaderTimeout bounds that wait by the same idle timeout. The
// handshake is left to its own timeout.
func (qc *quicConn) watchIdle(idle time.Duration) (stop func()) {
	qc.last.Store(time.Now().UnixNano())
	var t *time.Timer
	var mu sync.Mutex // t is set before the first check runs
	mu.Lock()
	defer mu.Unlock()
	t = time.AfterFunc(idle, func() {
		mu.Lock()
		defer mu.Unlock()
		if qc.c.Context().Err() != nil {
			return // closed; stop may be racing this run
		}
		left := idle - time.Since(time.Unix(0, qc.last.Load()))
		select {
		case <-qc.c.HandshakeComplete():
		default:
			left = idle
		}
		if left > 0 || qc.requests.Load() > 0 {
			t.Reset(max(left, idle/4))
			return
		}
		qc.c.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "idle timeout")
	})
	return func() { t.Stop() }
}

// closeIfIdleIn closes the connection after d unless a request is being
// served then (its end will call it again).
func (qc *quicConn) closeIfIdleIn(d time.Duration) {
	time.AfterFunc(d, func() {
		if qc.requests.Load() == 0 {
			qc.c.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "shutting down")
		}
	})
}

func (q *quicListener) release() {
	if q.unreg != nil {
		q.unreg()
		q.unreg = nil
	}
}

// serveRequest serves one HTTP/3 request. A request that arrived in 0-RTT
// early data and is served before the handshake completes is marked with
// EarlyDataHeader; unless its method is safe it is refused with 425 Too
// Early (RFC 8470), which tells the client to send it again after the
// handshake. Once the handshake has completed, the client has proved it
// holds this connection's keys, and its requests are no longer early. The
// EarlyDataHeader of a trusted intermediary stays (relayedEarlyData), and
// the upstream decides on such a request: it was early on an earlier hop,
// and waiting for this handshake would not make it safe.
func (q *quicListener) serveRequest(w http.ResponseWriter, r *http.Request) {
	s := q.l.s
	rt := q.l.route.Load()
	s.relayEarlyData(rt, r)
	early := false
	if qc, ok := r.Context().Value(quicConnKey{}).(*quicConn); ok {
		qc.requests.Add(1)
		qc.last.Store(time.Now().UnixNano())
		defer func() {
			qc.last.Store(time.Now().UnixNano())
			q.requestDone(qc)
		}()
		select {
		case <-qc.c.HandshakeComplete():
		default:
			early = true
		}
	}
	if early {
		if !safeMethod(r.Method) {
			s.quic.tooEarly.Add(1)
			http.Error(w, "425 Too Early: send this request again after the handshake", http.StatusTooEarly)
			return
		}
		s.quic.earlyRequests.Add(1)
		r.Header.Set(EarlyDataHeader, "1")
	}
	if rt.handler == nil {
		http.Error(w, errNoHTTPUpstream.Error(), http.StatusBadGateway)
		return
	}
	bw := s.boundWrites(w, r)
	if r.Method == http.MethodConnect {
		s.serveConnect(&statusWriter{ResponseWriter: bw, s: s}, r, rt, q.l)
		return
	}
	sw := &statusWriter{ResponseWriter: bw, s: s}
	rt.handler.ServeHTTP(sw, s.boundBody(w, r))
	sw.lastFlush()
}

// lastFlush flushes, within the idle timeout, what the handler of an
// HTTP/3 request left in http3's buffer (an answer of up to 4 KiB is kept
// there whole, for its Content-Length), and bounds what http3 writes after
// it (trailers, the stream's end) by the idle timeout too. http3 flushes
// that buffer itself once the handler returns, with no bound: a client
// that never opened the stream's flow control window held the stream, its
// goroutine and the answer for ever, and a connection kept busy by other
// requests never went idle. Cut by a write deadline instead, http3 would
// end the stream as if the answer were whole; a flush that times out
// resets the stream (http.ErrAbortHandler), as over HTTP/2. The
// Content-Length that http3 sets on an answer it holds whole is set here,
// as the flush sends the headers.
//
// An answer of which a write or flush failed (timed out, most often) is
// cut short, and its stream is reset too: the reverse proxy ends such an
// answer by returning, not with http.ErrAbortHandler, when the request
// does not come from net/http's server, and http3 would then end the
// stream as if the answer were whole.
func (w *statusWriter) lastFlush() {
	if w.failed {
		panic(http.ErrAbortHandler)
	}
	iw := w.ResponseWriter.(*idleWriter)
	h := w.Header()
	if _, ok := h["Content-Length"]; !ok {
		// Ignored if the headers are gone already.
		h.Set("Content-Length", strconv.FormatInt(w.written, 10))
	}
	if err := iw.FlushError(); err != nil {
		panic(http.ErrAbortHandler)
	}
	iw.boundLastFlush()
}

// safeMethod reports whether a request with method may be served from early
// data (RFC 9110 §9.2.1: safe methods; TRACE is left out).
func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}

// statusWriter counts the 425 responses an upstream sends, and the bytes
// of the body written (for lastFlush).
type statusWriter struct {
	http.ResponseWriter
	s       *Server
	written int64
	failed  bool // a write or flush failed: the answer is not whole
}

func (w *statusWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.written += int64(n)
	if err != nil && err != http.ErrBodyNotAllowed {
		w.failed = true
	}
	return n, err
}

// FlushError flushes the response, for http.ResponseController (the
// reverse proxy flushes streamed responses), and notes a failure.
func (w *statusWriter) FlushError() error {
	err := http.NewResponseController(w.ResponseWriter).Flush()
	if err != nil {
		w.failed = true
	}
	return err
}

func (w *statusWriter) WriteHeader(code int) {
	if code == http.StatusTooEarly {
		w.s.quic.tooEarly.Add(1)
	}
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

var errNoQUIC = errors.New("proxy: the listener's route has no HTTP/3 config")

var errQUICFull = errors.New("proxy: the listener has MaxConnections QUIC connections open")

// setQUIC applies the HTTP/3 settings of cfg.
func (s *Server) setQUIC(cfg Config) {
	s.antiReplay = cfg.AntiReplay
	if s.antiReplay == nil {
		s.antiReplay = newLocalStrikes(1 << 20).strike
	}
	s.earlyWindow = cfg.EarlyDataWindow
	if s.earlyWindow <= 0 {
		s.earlyWindow = defaultEarlyDataWindow
	}
	s.earlySkew = cfg.EarlyDataSkew
	if s.earlySkew <= 0 {
		s.earlySkew = defaultEarlyDataSkew
	}
	if cfg.QUICTokenKey != nil {
		s.quicKeys.TokenKey = *cfg.QUICTokenKey
	} else {
		rand.Read(s.quicKeys.TokenKey[:])
	}
	if cfg.QUICStatelessResetKey != nil {
		s.quicKeys.StatelessResetKey = *cfg.QUICStatelessResetKey
	} else {
		rand.Read(s.quicKeys.StatelessResetKey[:])
	}
	s.validateAddrs = cfg.QUICValidateAddresses
}
