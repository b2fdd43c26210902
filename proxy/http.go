package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ResumedHeader is the request header the reverse proxy sets for its
// upstream: "1" if the client's TLS connection resumed a session, "0" if it
// made a full handshake. A value sent by the client is replaced.
const ResumedHeader = "X-TLS-Resumed"

// xForwarded is the prefix of the forwarding headers that a reverse proxy
// sets and a client may not.
const xForwarded = "X-Forwarded-"

var errNoHTTPUpstream = errors.New("this listener's upstream is now tcp://; it no longer serves HTTP")

// serveRequest sends a request to the listener's current HTTP upstream.
func (l *listener) serveRequest(w http.ResponseWriter, r *http.Request) {
	if c := connOf(r); c != nil {
		l.s.handedOff(c, true)
	}
	w = l.s.boundWrites(w, r)
	defer w.(*idleWriter).boundLastFlush()
	if l.quic != nil {
		w.Header().Set("Alt-Svc", l.quic.altSvc)
	}
	rt := l.route.Load()
	// TLS over TCP never carries early data here: only a trusted
	// intermediary's mark stays.
	l.s.relayEarlyData(rt, r)
	if rt.handler == nil {
		http.Error(w, errNoHTTPUpstream.Error(), http.StatusBadGateway)
		return
	}
	if r.ProtoMajor == 1 {
		// net/http's HTTP/1 server closes the request body once the
		// response starts, and the upstream transport, having sent the
		// body's declared length, reads it once more to check its end:
		// on a closed body that read fails and the transport drops the
		// upstream connection, cutting an answer already on its way (Go
		// issue 40747). Full duplex keeps the body open.
		http.NewResponseController(w).EnableFullDuplex()
	}
	if r.Method == http.MethodConnect {
		l.s.serveConnect(w, r, rt, l)
		return
	}
	if strayProtocol(r) {
		http.Error(w, "400 bad request: the :protocol pseudo-header is for CONNECT only", http.StatusBadRequest)
		return
	}
	r = l.s.boundBody(w, r)
	rt.handler.ServeHTTP(w, r)
	l.s.boundDiscard(r)
}

// boundBody returns r with its body bounded by the idle timeout: each wait
// for the body is bounded as net/http's ReadHeaderTimeout bounds the wait
// for the headers. Without it, a client that sends headers and then part
// of a body, or nothing, holds its connection (and the upstream's request)
// for ever. The bound holds only while a read waits: while the upstream
// does not take the body, or prepares its answer, the client is not the
// one waiting. The body is in the returned request's context too, for
// clientFailed and boundDiscard.
func (s *Server) boundBody(w http.ResponseWriter, r *http.Request) *http.Request {
	if r.Body == nil || r.Body == http.NoBody {
		return r
	}
	b := &idleBody{ReadCloser: r.Body, rc: http.NewResponseController(w), idle: s.idle, left: r.ContentLength}
	r = r.WithContext(context.WithValue(r.Context(), idleBodyKey{}, b))
	r.Body = b
	return r
}

// boundDiscard bounds, after an HTTP/1 handler has returned, net/http's
// read of what it left of the request body (to reuse the connection),
// which would otherwise wait for a stalled client for ever. HTTP/2 and
// HTTP/3 reset the stream instead.
func (s *Server) boundDiscard(r *http.Request) {
	if b, ok := r.Context().Value(idleBodyKey{}).(*idleBody); ok && r.ProtoMajor == 1 && !b.ended.Load() {
		b.returned.Store(true) // a read still under way keeps the bound
		b.rc.SetReadDeadline(time.Now().Add(s.idle))
	}
}

type idleBodyKey struct{}

// An idleBody is a request body whose every read must make progress within
// idle.
type idleBody struct {
	io.ReadCloser
	rc       *http.ResponseController
	idle     time.Duration
	ended    atomic.Bool // a read returned io.EOF
	failed   atomic.Bool // a read failed: the client timed out or broke off
	returned atomic.Bool // the HTTP/1 handler has returned (boundDiscard)
	left     int64       // of the declared Content-Length, not read yet; -1: none declared
}

func (b *idleBody) Read(p []byte) (int, error) {
	b.rc.SetReadDeadline(time.Now().Add(b.idle))
	n, err := b.ReadCloser.Read(p)
	if b.left >= 0 {
		b.left -= int64(n)
		if err == io.EOF && b.left > 0 {
			// A body that ends short of its Content-Length is the
			// client's failure (RFC 9114 §4.1.2: malformed), not an
			// end. net/http's HTTP/1 and HTTP/2 servers say so
			// themselves; quic-go's HTTP/3 server ends it with io.EOF,
			// and the upstream's transport would then refuse the short
			// body as if the upstream had failed.
			err = io.ErrUnexpectedEOF
		}
	}
	if err == io.EOF {
		b.ended.Store(true)
	}
	switch {
	case err != nil && err != io.EOF:
		// The bound stays, for what net/http discards.
		b.failed.Store(true)
	case !b.returned.Load():
		// No bound between reads (for HTTP/2 a deadline is a timer
		// on the stream, not on a read), nor once the body has ended,
		// when net/http reads only to see the client go. Once the
		// HTTP/1 handler has returned, the bound stays for what
		// net/http discards.
		b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

// boundWrites returns w, the response to r, with each write and flush
// bounded by the idle timeout: a client that stops reading would otherwise
// block the handler (and the upstream's response) for ever once the
// buffers between them are full. Between writes there is no bound: a slow
// upstream is not the client's doing.
//
// Over HTTP/1 and HTTP/2, it first lifts the bound that net/http set from
// the listener's WriteTimeout when the request came (see idleWriter.none).
// Over HTTP/2 and HTTP/3 the bounds are the stream's, not the
// connection's: the other streams go on.
func (s *Server) boundWrites(w http.ResponseWriter, r *http.Request) http.ResponseWriter {
	iw := &idleWriter{ResponseWriter: w, rc: http.NewResponseController(w), idle: s.idle, h2: r.ProtoMajor == 2, h3: r.ProtoMajor == 3}
	if r.ProtoMajor <= 2 {
		iw.rc.SetWriteDeadline(iw.none())
	}
	return iw
}

// noWriteBound is the write deadline, this far ahead, that stands for
// none on an HTTP/2 stream (see idleWriter.none).
const noWriteBound = 100 * 365 * 24 * time.Hour

// An idleWriter is a response writer whose every write must make progress
// within idle.
type idleWriter struct {
	http.ResponseWriter
	rc   *http.ResponseController
	idle time.Duration
	h2   bool // the response to an HTTP/2 request
	h3   bool // the response to an HTTP/3 request
}

// none returns the write deadline that stands for no bound. Over HTTP/2
// it is noWriteBound ahead, not the zero time: net/http's HTTP/2 server
// keeps a stream's write deadline as a timer, which the listener's
// WriteTimeout arms when the stream opens and the stream's end stops. A
// deadline handled after that end (net/http handles them on the
// connection's goroutine, in no fixed order with the stream's last
// frames) then finds the timer stopped and changes nothing. The zero time
// would drop the timer, and a deadline handled after the end would arm a
// new one on the closed stream: kept, with the stream, until it fired a
// needless RST_STREAM.
func (w *idleWriter) none() time.Time {
	if w.h2 {
		return time.Now().Add(noWriteBound)
	}
	return time.Time{}
}

func (w *idleWriter) Write(p []byte) (int, error) {
	w.rc.SetWriteDeadline(time.Now().Add(w.idle))
	defer w.rc.SetWriteDeadline(w.none())
	return w.ResponseWriter.Write(p)
}

// FlushError flushes the response within idle, for http.ResponseController
// (the reverse proxy flushes streamed responses).
func (w *idleWriter) FlushError() error {
	w.rc.SetWriteDeadline(time.Now().Add(w.idle))
	defer w.rc.SetWriteDeadline(w.none())
	return w.rc.Flush()
}

// boundLastFlush bounds, as the handler of an HTTP/2 request returns,
// net/http's flush of what the handler left in the stream's buffer, which
// follows. That flush waits for the client to open the stream's flow
// control window, and nothing else bounds the wait: the connection is not
// idle, and its socket moves, for the other streams. A client that never
// opened the window would hold the stream, a goroutine, and so the
// connection, for ever. Past the idle timeout, net/http resets the
// stream. HTTP/1 needs no such bound: its flush is a write to the socket,
// bounded by conn.Write.
func (w *idleWriter) boundLastFlush() {
	if w.h2 || w.h3 {
		w.rc.SetWriteDeadline(time.Now().Add(w.idle))
	}
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *idleWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// modifyResponse is the reverse proxy's ModifyResponse. An upstream's
// Alt-Svc names the upstream's own endpoints: on a listener that serves
// HTTP/3, only the listener's own Alt-Svc holds, and the upstream's is
// dropped.
func (s *Server) modifyResponse(res *http.Response) error {
	if ownsAltSvc(res.Request) {
		res.Header.Del("Alt-Svc")
	}
	return s.boundUpgrade(res)
}

// ownsAltSvc reports whether r came on a listener that serves HTTP/3, over
// TCP or QUIC.
func ownsAltSvc(r *http.Request) bool {
	if _, ok := r.Context().Value(quicConnKey{}).(*quicConn); ok {
		return true
	}
	c := connOf(r)
	return c != nil && c.l.quic != nil
}

// boundUpgrade bounds a connection that the upstream switched to another
// protocol (a WebSocket, with 101 Switching Protocols) by the idle timeout,
// as TCP passthrough is: once nothing has moved either way for that long,
// both the client's connection and the upstream's are closed. ReverseProxy
// copies the switched connection both ways through res.Body without any
// deadline, so every byte passes the wrapper that keeps the time.
//
// It also counts the switched connections as WebSockets over HTTP/1.1, and
// the upgrades the upstream refused. An upstream that switches to another
// protocol than the one asked for is a 502: ReverseProxy would refuse it
// too, but leave the upstream's connection open.
func (s *Server) boundUpgrade(res *http.Response) error {
	if res.StatusCode != http.StatusSwitchingProtocols {
		// ReverseProxy sends Upgrade only with an upgrade (rewrite
		// drops h2c's).
		if len(res.Request.Header["Upgrade"]) > 0 {
			s.ws.refuse(wsH1, refusedUpstream)
		}
		return nil
	}
	back, ok := res.Body.(io.ReadWriteCloser)
	if !ok {
		return nil // ReverseProxy refuses it
	}
	if to := upgradeType(res.Header); !printableASCII(to) || !strings.EqualFold(to, upgradeType(res.Request.Header)) {
		back.Close()
		return errSwitchedElsewhere
	}
	var cut func()
	if c, ok := res.Request.Context().Value(connKey{}).(net.Conn); ok {
		cut = func() { c.Close() }
	}
	s.ws.start(wsH1)
	res.Body = s.newIdleUpgrade(back, cut, func() { s.ws.end(wsH1) })
	return nil
}

var errSwitchedElsewhere = errors.New("upstream switched to another protocol than the one asked for")

// upgradeType returns the protocol h asks for or switches to ("" if none):
// its Upgrade field, if its Connection field lists "upgrade".
func upgradeType(h http.Header) string {
	if !headerHasToken(h, "Connection", "upgrade") {
		return ""
	}
	return h.Get("Upgrade")
}

// printableASCII reports whether s holds printable ASCII only (what
// ReverseProxy requires of an Upgrade field, or refuses the switch).
func printableASCII(s string) bool {
	for i := range len(s) {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// newIdleUpgrade returns back, the upstream's side of a switched
// connection (or of a TCP passthrough), closed with the client's side (by
// cut, if not nil) once nothing has moved either way for the idle timeout. release, if not nil,
// is called once, when it is closed.
func (s *Server) newIdleUpgrade(back io.ReadWriteCloser, cut, release func()) *idleUpgrade {
	u := &idleUpgrade{ReadWriteCloser: back, cut: cut, release: release, idle: s.idle}
	u.last.Store(time.Now().UnixNano())
	u.mu.Lock()
	u.timer = time.AfterFunc(s.idle, u.check)
	u.mu.Unlock()
	return u
}

// An idleUpgrade is the upstream's side of a switched connection, closed
// with the client's once nothing has moved either way for idle.
type idleUpgrade struct {
	io.ReadWriteCloser
	cut     func() // closes the client's side; nil if not known
	release func() // called once, when closed; nil if nothing to do
	idle    time.Duration
	last    atomic.Int64 // unix nanoseconds of the last byte moved either way

	mu     sync.Mutex
	timer  *time.Timer
	closed bool
}

// Read takes the upstream's bytes for the client; the next read comes
// only once the client has taken them.
func (u *idleUpgrade) Read(p []byte) (int, error) {
	n, err := u.ReadWriteCloser.Read(p)
	if n > 0 {
		u.last.Store(time.Now().UnixNano())
	}
	return n, err
}

// Write gives the upstream the client's bytes.
func (u *idleUpgrade) Write(p []byte) (int, error) {
	n, err := u.ReadWriteCloser.Write(p)
	if n > 0 {
		u.last.Store(time.Now().UnixNano())
	}
	return n, err
}

// CloseWrite passes on the end of the client's stream to the upstream.
func (u *idleUpgrade) CloseWrite() error {
	if cw, ok := u.ReadWriteCloser.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return http.ErrNotSupported
}

func (u *idleUpgrade) Close() error {
	u.mu.Lock()
	u.timer.Stop()
	u.closing()
	u.mu.Unlock()
	return u.ReadWriteCloser.Close()
}

// closing marks u closed, with u.mu held, and calls u.release the first
// time.
func (u *idleUpgrade) closing() {
	if !u.closed && u.release != nil {
		u.release()
	}
	u.closed = true
}

// check closes both connections if they have been idle for u.idle, and
// otherwise looks again when they would have been.
func (u *idleUpgrade) check() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return
	}
	if left := u.idle - time.Since(time.Unix(0, u.last.Load())); left > 0 {
		u.timer.Reset(left)
		return
	}
	u.closing()
	// Closing both ends every copy that waits on either.
	if u.cut != nil {
		u.cut()
	}
	u.ReadWriteCloser.Close()
}

// clientFailed reports whether r failed on the client's side: the client
// went away, or reading its body failed.
func clientFailed(r *http.Request) bool {
	b, ok := r.Context().Value(idleBodyKey{}).(*idleBody)
	return r.Context().Err() != nil || ok && b.failed.Load()
}

type connKey struct{}

// withConn puts the connection in the request's context, for the facts.
func withConn(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// connOf returns the accepted connection under a request.
func connOf(r *http.Request) *conn {
	tc, _ := r.Context().Value(connKey{}).(*tls.Conn)
	if tc == nil {
		return nil
	}
	c, _ := tc.NetConn().(*conn)
	return c
}

// reverseProxy returns a reverse proxy to target and its transport.
func (s *Server) reverseProxy(target *url.URL) (http.Handler, *http.Transport) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.ResponseHeaderTimeout = 0 // slow upstreams are the upstream's business
	tr.DialContext = (&net.Dialer{Timeout: defaultDialTimeout, KeepAlive: 30 * time.Second}).DialContext
	rp := &httputil.ReverseProxy{
		Rewrite:        func(pr *httputil.ProxyRequest) { s.rewrite(pr, target) },
		Transport:      tr,
		ModifyResponse: s.modifyResponse,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			// r is the request as sent upstream: with Upgrade only
			// for an upgrade (see boundUpgrade).
			if len(r.Header["Upgrade"]) > 0 && !clientFailed(r) {
				s.ws.refuse(wsH1, refusedUpstreamError)
			}
			s.upstreamFailed(w, r, target, err)
		},
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	return rp, tr
}

// rewrite makes pr.Out the request for target: its URL, the forwarding
// headers, ResumedHeader and EarlyDataHeader. ReverseProxy has already
// dropped the hop-by-hop headers and the client's Forwarded and
// X-Forwarded-For, -Host and -Proto.
func (s *Server) rewrite(pr *httputil.ProxyRequest, target *url.URL) {
	pr.SetURL(target)
	// The other X-Forwarded- headers (X-Forwarded-Port, -Prefix, -Ssl,
	// -Client-Cert...) are as easily believed upstream, and a client is
	// no proxy. So are those the proxy sets spelt with underscores
	// (X_Forwarded_For, Early_Data): upstreams that map header names to
	// variables (CGI, WSGI, Rack: HTTP_X_FORWARDED_FOR) take both
	// spellings for one.
	for k := range pr.Out.Header {
		n := k
		if strings.Contains(k, "_") {
			n = strings.ReplaceAll(k, "_", "-")
			if strings.EqualFold(n, ResumedHeader) || strings.EqualFold(n, EarlyDataHeader) {
				delete(pr.Out.Header, k)
				continue
			}
		}
		if len(n) > len(xForwarded) && strings.EqualFold(n[:len(xForwarded)], xForwarded) {
			delete(pr.Out.Header, k)
		}
	}
	if headerHasToken(pr.Out.Header, "Upgrade", "h2c") {
		// A switch of this connection to cleartext HTTP/2 would hand
		// the client's next requests to the upstream unseen by this
		// proxy (past its header rewriting): served as an ordinary
		// request, as RFC 9110 lets a server ignore Upgrade.
		pr.Out.Header.Del("Upgrade")
		pr.Out.Header.Del("Connection")
	}
	pr.SetXForwarded()
	pr.Out.Host = pr.In.Host
	resumed := "0"
	if pr.In.TLS != nil && pr.In.TLS.DidResume {
		resumed = "1"
	}
	pr.Out.Header.Set(ResumedHeader, resumed)
	if _, ok := pr.In.Header[EarlyDataHeader]; ok {
		// Set by the node or kept from a trusted intermediary
		// (relayedEarlyData), it goes upstream even if the request's
		// Connection field names it: ReverseProxy would drop it then,
		// as a hop-by-hop field, and the upstream would take a request
		// that may be a replay for one that is not (RFC 8470 §5.1: an
		// intermediary must not remove it).
		pr.Out.Header[EarlyDataHeader] = []string{"1"}
	}
	s.stats.requests.Add(1)
}

// upstreamFailed answers 502 for a request to target that failed, and
// counts it as the upstream's failure unless the client caused it.
func (s *Server) upstreamFailed(w http.ResponseWriter, r *http.Request, target *url.URL, err error) {
	if clientFailed(r) {
		// The client left, or stalled or broke off its body: the
		// upstream is not to blame, and nobody is waiting for an
		// answer worth giving.
		s.log.Debug("request ended by the client", "upstream", target.Redacted(), "client", r.RemoteAddr, "err", err)
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	s.stats.upstream.Add(1)
	s.log.Debug("upstream request failed", "upstream", target.Redacted(), "client", r.RemoteAddr, "err", err)
	s.warn.note("upstream", "upstream requests failing (502)", r.RemoteAddr, "upstream", target.Redacted(), "last_err", err.Error())
	w.WriteHeader(http.StatusBadGateway)
}
