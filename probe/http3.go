package probe

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// ticketWait is how long an HTTP/3 client waits, after its response, for
// the session ticket of the connection, which a server sends once the
// handshake completes and may send after the answer to a 0-RTT request.
const ticketWait = 250 * time.Millisecond

// prepareHTTP3 checks the settings an HTTP/3 run needs and turns
// Config.Request into a method and a URL per target (of the given ports).
func prepareHTTP3(p *plan, ports []string) error {
	c := &p.cfg
	if c.Version == tls.VersionTLS12 {
		return errors.New("probe: HTTP/3 runs over TLS 1.3 only")
	}
	switch c.Request {
	case RequestNone, RequestRead:
		return fmt.Errorf("probe: request %q: an HTTP/3 probe sends a request", c.Request)
	}
	line, err := requestLine(c.Request)
	if err != nil {
		return err
	}
	f := strings.Fields(line)
	p.h3Method = f[0]
	for _, port := range ports {
		p.h3URLs = append(p.h3URLs, "https://"+authority(c.ServerName, port)+f[1])
	}
	return nil
}

// resolver looks up the host names of HTTP/3 targets; tests replace it.
var resolver = net.DefaultResolver

// resolveUDP resolves hostport, as net.ResolveUDPAddr does (an IPv4
// address first), within ctx: a run that ends (SIGINT, SIGTERM) does not
// wait for a slow DNS server to answer or time out.
func resolveUDP(ctx context.Context, hostport string) (*net.UDPAddr, error) {
	host, service, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, err
	}
	port, err := resolver.LookupPort(ctx, "udp", service)
	if err != nil {
		return nil, err
	}
	if host == "" {
		return &net.UDPAddr{Port: port}, nil
	}
	ips, err := resolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, err
	}
	if len(ips) == 0 {
		return nil, &net.AddrError{Err: "no suitable address found", Addr: host}
	}
	ip := ips[0]
	for _, a := range ips {
		if a.Unmap().Is4() {
			ip = a.Unmap()
			break
		}
	}
	return net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, uint16(port))), nil
}

// connectQUIC makes one HTTP/3 connection to target: dial (with 0-RTT
// early data when the client's session allows it), request, response. A
// GET or HEAD goes in early data; if the server refuses it, the request is
// sent again once the handshake is done, as a browser does.
func (w *worker) connectQUIC(ctx context.Context, target int) result {
	p := w.r.plan
	cctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()
	addr, err := resolveUDP(cctx, p.addrs[target])
	if err != nil {
		return result{failure: FailDial}
	}
	// A socket of its own, as a TCP connection has a port of its own: a
	// balancer keeps a flow on one node by its source address and port,
	// and would send every connection of a client that reused one socket
	// to the same node.
	udp, err := net.ListenUDP("udp", nil)
	if err != nil {
		return result{failure: FailDial}
	}
	tr := &quic.Transport{Conn: udp}
	defer func() {
		tr.Close()
		udp.Close()
	}()
	// Only a GET or HEAD goes in early data. For any other request the
	// client offers none: an offer that carries no request would still
	// spend the ticket's one 0-RTT use in the farm and count as early data.
	safe := p.h3Method == http.MethodGet || p.h3Method == http.MethodHead
	dial := tr.Dial
	if safe {
		dial = tr.DialEarly
	}
	w.cache.Begin(target)
	start := time.Now()
	conn, err := dial(cctx, addr, w.qtls, &quic.Config{HandshakeIdleTimeout: p.cfg.Timeout})
	if err != nil {
		return result{failure: quicFailure(err), offered: w.cache.HandedOut()}
	}
	defer func() { conn.CloseWithError(0, "") }() // the last conn: redial closes the one it replaces
	// redial replaces conn, whose 0-RTT data the server refused, once its
	// handshake is complete: as a browser does, the request is sent again
	// after the handshake — on a new, resumed connection, because
	// quic-go's HTTP/3 client cannot always reuse one whose 0-RTT streams
	// were discarded (and may have closed it: an HTTP/3 client connection
	// that saw its streams refused ends it with H3_INTERNAL_ERROR).
	redial := func() error {
		// Not before the ticket of the handshake just completed, which
		// the new connection then offers, as the client's next connection
		// would. Offered the ticket conn resumed instead (its new one not
		// yet arrived), the server takes that session as resumed twice and
		// retires the child it issued on conn: 930 of 1,000 redials did,
		// and 33 later connections offered a retired session and made a
		// full handshake (TestHTTP3ResumesWithEarlyDataRefused).
		w.cache.WaitPut(cctx, ticketWait)
		conn.CloseWithError(0, "")
		c, err := tr.Dial(cctx, addr, w.qtls, &quic.Config{HandshakeIdleTimeout: p.cfg.Timeout})
		if err != nil {
			return err
		}
		conn = c
		return nil
	}
	early := false
	select {
	case <-conn.HandshakeComplete():
	default:
		early = true // DialEarly returned with 0-RTT keys, before the handshake
	}
	var str *http3.RequestStream
	if early {
		// A refusal that arrived before the stream opened fails it with
		// quic.Err0RTTRejected: the request goes after the handshake, as
		// for any refusal (below).
		if str, err = w.sendH3(cctx, conn, target); err != nil && !errors.Is(err, quic.Err0RTTRejected) {
			return result{failure: FailRequest}
		}
	}
	select {
	case <-conn.HandshakeComplete():
	case <-cctx.Done():
		return result{failure: FailTimeout, offered: w.cache.HandedOut()}
	case <-conn.Context().Done():
		return result{failure: quicFailure(context.Cause(conn.Context())), offered: w.cache.HandedOut()}
	}
	done := time.Now()
	cs := conn.ConnectionState()
	offered, issuer := w.cache.Offer() // before any second connection
	if early && !cs.Used0RTT {
		// Refused: the 0-RTT data is void, the handshake went on in 1-RTT
		// (counted below).
		if err := redial(); err != nil {
			return result{failure: quicFailure(err)}
		}
		str = nil
	}
	res := result{
		resumed:   cs.TLS.DidResume,
		early:     cs.Used0RTT,
		connect:   done.Sub(start),
		handshake: done.Sub(start),
	}
	res.offered = offered || res.resumed
	res.crossNode = res.resumed && issuer != target
	if str == nil {
		str, err = w.sendH3(cctx, conn, target)
		if safe && !cs.Used0RTT && errors.Is(err, quic.Err0RTTRejected) {
			// Refused too, though DialEarly's connection looked done when
			// early was judged: the refusal came over loopback at once and
			// completed the handshake first. Its streams fail until it
			// moves on.
			if err = redial(); err == nil {
				str, err = w.sendH3(cctx, conn, target)
			}
		}
		if err != nil {
			return result{failure: FailRequest}
		}
	}
	// The stream watches no context: bound the answer by the connection's
	// deadline, and end the wait at once if ctx ends.
	deadline, _ := cctx.Deadline()
	str.SetReadDeadline(deadline)
	defer context.AfterFunc(ctx, func() { str.SetReadDeadline(time.Unix(1, 0)) })()
	resp, err := str.ReadResponse()
	if err != nil {
		return result{failure: requestFailure(err)}
	}
	// The response's head is the server's first bytes: as over TCP, the
	// rest is not read (an answer may stream for ever).
	resp.Body.Close()
	w.cache.WaitPut(cctx, ticketWait)
	return res
}

// sendH3 sends the run's request to target on a new stream of conn.
func (w *worker) sendH3(ctx context.Context, conn *quic.Conn, target int) (*http3.RequestStream, error) {
	p := w.r.plan
	cc := (&http3.Transport{}).NewClientConn(conn)
	str, err := cc.OpenRequestStream(ctx)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, p.h3Method, p.h3URLs[target], nil)
	if err != nil {
		return nil, err
	}
	if err := str.SendRequestHeader(req); err != nil {
		return nil, err
	}
	str.Close()
	return str, nil
}

func quicFailure(err error) string {
	var te *quic.TransportError
	var idle *quic.IdleTimeoutError
	var hs *quic.HandshakeTimeoutError
	switch {
	case isTimeout(err), errors.As(err, &idle), errors.As(err, &hs):
		return FailTimeout
	case errors.As(err, &te) && te.ErrorCode.IsCryptoError():
		if strings.Contains(err.Error(), "certificate") {
			return FailCertificate
		}
		return FailHandshake
	}
	return FailHandshake
}
