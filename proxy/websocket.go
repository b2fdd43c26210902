package proxy

import (
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"os"
	"strings"
)

// http2WebSockets is what HTTP2WebSockets reports: net/http reads the same
// variable, the same way, once at its start.
var http2WebSockets = strings.Contains(os.Getenv("GODEBUG"), "http2xconnect=1")

// HTTP2WebSockets reports whether the HTTP/2 listeners of this process
// serve WebSockets (RFC 8441). net/http's HTTP/2 server offers extended
// CONNECT, which they need, only if the environment variable GODEBUG held
// http2xconnect=1 when the process started (a //go:debug line does not
// do); without it, clients open their WebSockets over HTTP/1.1. HTTP/3
// listeners always serve them (RFC 9220): quic-go's server always offers
// extended CONNECT.
func HTTP2WebSockets() bool { return http2WebSockets }

// allowedMethods is the Allow header of the 405 answer to an ordinary
// CONNECT: the methods the reverse proxy passes on (all but CONNECT).
const allowedMethods = "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, TRACE"

// wsGUID is the constant of the WebSocket handshake (RFC 6455 §1.3).
const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// hopByHop are the header fields that concern one connection only (RFC 9110
// §7.6.1), besides those the Connection field names.
var hopByHop = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// connectProtocol returns the protocol of an extended CONNECT request (the
// :protocol pseudo-header of RFC 8441 and RFC 9220), or "" for an ordinary
// CONNECT. net/http's HTTP/2 server keeps it as a ":protocol" header;
// quic-go's HTTP/3 server puts it in r.Proto.
func connectProtocol(r *http.Request) string {
	switch r.ProtoMajor {
	case 2:
		return r.Header.Get(":protocol")
	case 3:
		if r.Proto != "HTTP/3.0" {
			return r.Proto
		}
	}
	return ""
}

// strayProtocol reports whether r carries a :protocol pseudo-header
// without being a CONNECT. RFC 8441 allows it on CONNECT only, but
// net/http's HTTP/2 server (with extended CONNECT on) takes it on any
// method and keeps it as a ":protocol" header, which the reverse proxy's
// transport then refuses as a header name: the client's error would be
// answered and counted as the upstream's failure. (quic-go's HTTP/3
// server refuses such a request itself.)
func strayProtocol(r *http.Request) bool {
	return r.ProtoMajor == 2 && r.Method != http.MethodConnect && r.Header.Get(":protocol") != ""
}

// serveConnect answers a CONNECT request. The reverse proxy opens no
// tunnels: an ordinary CONNECT gets 405 Method Not Allowed, whatever the
// upstream, and never reaches it (an upstream that is a forward proxy
// would open the tunnel). An extended CONNECT for a WebSocket, over HTTP/2
// or HTTP/3, goes to an http:// or https:// upstream as an HTTP/1.1
// Upgrade (serveWebSocket); for any other protocol, or to the built-in
// upstream, it gets 501 Not Implemented. l is the listener r came on, whose
// WebSockets are bounded (admitWebSocket).
func (s *Server) serveConnect(w http.ResponseWriter, r *http.Request, rt *route, l *listener) {
	proto := connectProtocol(r)
	switch {
	case proto == "":
		s.log.Debug("CONNECT refused", "client", r.RemoteAddr, "authority", r.Host, "http", r.Proto)
		w.Header().Set("Allow", allowedMethods)
		if r.ProtoMajor == 1 {
			// The client may already be sending what it meant for
			// the tunnel.
			w.Header().Set("Connection", "close")
		}
		http.Error(w, "405 method not allowed: this server is a reverse proxy and opens no tunnels", http.StatusMethodNotAllowed)
	case !strings.EqualFold(proto, "websocket") || rt.target == nil:
		s.log.Debug("extended CONNECT refused", "client", r.RemoteAddr, "protocol", proto, "http", r.Proto)
		http.Error(w, "501 not implemented: extended CONNECT is served for WebSocket to an http:// or https:// upstream only", http.StatusNotImplemented)
	default:
		release := s.admitWebSocket(w, r, l)
		if release == nil {
			return
		}
		defer release()
		s.serveWebSocket(w, r, rt)
	}
}

// serveWebSocket serves a WebSocket opened with extended CONNECT over
// HTTP/2 (RFC 8441) or HTTP/3 (RFC 9220): it sends the upstream the
// equivalent HTTP/1.1 Upgrade request, with the headers any proxied request
// gets, and once the upstream has switched protocols it answers the client
// 200 and copies the stream's bytes both ways until either side ends it,
// or nothing has moved either way for the idle timeout, as on a connection
// switched over HTTP/1.1. An upstream that refuses the WebSocket has its
// answer passed on; one that answers 2xx without switching, or switches to
// something else, is a 502 (a 2xx would tell the client the WebSocket is
// open).
func (s *Server) serveWebSocket(w http.ResponseWriter, r *http.Request, rt *route) {
	var nonce [16]byte
	rand.Read(nonce[:])
	key := base64.StdEncoding.EncodeToString(nonce[:])

	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	out := r.Clone(ctx)
	out.Method = http.MethodGet
	out.Proto, out.ProtoMajor, out.ProtoMinor = "HTTP/1.1", 1, 1
	out.RequestURI = ""
	out.Body, out.ContentLength = nil, 0
	out.Close = false
	removeHopByHop(out.Header)
	// What ReverseProxy drops before its Rewrite.
	for _, k := range []string{":protocol", "Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
		out.Header.Del(k)
	}
	if _, ok := out.Header["User-Agent"]; !ok {
		out.Header.Set("User-Agent", "") // not Go's
	}
	s.rewrite(&httputil.ProxyRequest{In: r, Out: out}, rt.target)
	out.Header.Set("Connection", "Upgrade")
	out.Header.Set("Upgrade", "websocket")
	out.Header.Set("Sec-WebSocket-Key", key) // RFC 8441 §5: the client sends none

	p := wsProtoOf(r)
	res, err := rt.transport.RoundTrip(out)
	if err != nil {
		s.wsFailed(w, r, rt, err)
		return
	}
	if ownsAltSvc(r) {
		res.Header.Del("Alt-Svc") // as modifyResponse
	}
	if res.StatusCode != http.StatusSwitchingProtocols {
		defer res.Body.Close()
		if res.StatusCode/100 == 2 {
			s.wsFailed(w, r, rt, fmt.Errorf("WebSocket handshake answered %d, not 101", res.StatusCode))
			return
		}
		// Refused (401, 403, 404, a redirect...): the client is told why.
		s.ws.refuse(p, refusedUpstream)
		removeHopByHop(res.Header)
		copyHeader(w.Header(), res.Header)
		w.WriteHeader(res.StatusCode)
		io.Copy(w, res.Body)
		return
	}
	back, ok := res.Body.(io.ReadWriteCloser)
	if !ok || !headerHasToken(res.Header, "Upgrade", "websocket") || res.Header.Get("Sec-WebSocket-Accept") != wsAccept(key) {
		res.Body.Close()
		s.wsFailed(w, r, rt, errors.New("upstream switched to something other than this WebSocket"))
		return
	}
	s.ws.start(p)
	defer s.ws.end(p)
	removeHopByHop(res.Header)
	res.Header.Del("Sec-WebSocket-Accept") // answers our key, not the client's
	// A 2xx answer to CONNECT has no length (RFC 9110 §9.3.6): a 101's
	// Content-Length (some servers send 0) would tell the client that
	// the stream ends there.
	res.Header.Del("Content-Length")
	copyHeader(w.Header(), res.Header)
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	if err := rc.Flush(); err != nil {
		back.Close()
		return
	}

	// Closing the request body ends the copy from the client; the
	// client's side of the stream ends when this handler returns.
	u := s.newIdleUpgrade(back, func() { r.Body.Close() }, nil)
	fromClient := make(chan struct{})
	go func() {
		defer close(fromClient)
		if _, err := io.Copy(u, r.Body); err == nil {
			u.CloseWrite() // the client ended its stream: a FIN
		} else {
			u.Close()
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := u.Read(buf)
		if n > 0 {
			// Each write and flush is bounded by the idle timeout (w is
			// an idleWriter): a client that stops reading is cut.
			if _, err := w.Write(buf[:n]); err != nil {
				break
			}
			if err := rc.Flush(); err != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	u.Close()
	r.Body.Close()
	<-fromClient
}

// wsFailed answers 502 for a WebSocket the upstream could not open, and
// counts it, unless the client caused the failure (upstreamFailed).
func (s *Server) wsFailed(w http.ResponseWriter, r *http.Request, rt *route, err error) {
	if !clientFailed(r) {
		s.ws.refuse(wsProtoOf(r), refusedUpstreamError)
	}
	s.upstreamFailed(w, r, rt.target, err)
}

// wsAccept returns the Sec-WebSocket-Accept that answers key (RFC 6455
// §4.2.2).
func wsAccept(key string) string {
	h := sha1.Sum([]byte(key + wsGUID))
	return base64.StdEncoding.EncodeToString(h[:])
}

// removeHopByHop deletes from h the hop-by-hop fields and those its
// Connection field names.
func removeHopByHop(h http.Header) {
	for _, v := range h.Values("Connection") {
		for f := range strings.SplitSeq(v, ",") {
			if f = strings.TrimSpace(f); f != "" {
				h.Del(f)
			}
		}
	}
	for _, k := range hopByHop {
		h.Del(k)
	}
}

// headerHasToken reports whether a comma-separated field of h lists token,
// without regard to case.
func headerHasToken(h http.Header, field, token string) bool {
	for _, v := range h.Values(field) {
		for f := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(f), token) {
				return true
			}
		}
	}
	return false
}

func copyHeader(dst, src http.Header) {
	for k, vv := range src {
		dst[k] = append(dst[k], vv...)
	}
}
