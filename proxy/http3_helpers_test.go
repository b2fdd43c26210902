package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/session"
	"github.com/tlsfarm/tlsfarm/ticket"
)

// An h3Node is one server of a test farm serving HTTP/3.
type h3Node struct {
	s     *Server
	cache *session.Cache
	node  *farm.Node
	addr  *net.UDPAddr // the HTTP/3 address (the TCP one has the same port)
}

// h3FarmOptions configure startH3Farm.
type h3FarmOptions struct {
	n         int
	mode      session.Mode
	redisURL  string // default: the shared Redis
	upstream  string
	earlyData bool
	// earlyTrusted is the listeners' EarlyDataTrusted.
	earlyTrusted []string
	earlyOff     int           // if set, the node (1, 2, ...) that does not accept early data
	validate     bool          // QUICValidateAddresses
	window       time.Duration // EarlyDataWindow
	secret       *farm.Secret
	singleUse    bool // session.Config.SingleUse
	// strikeSkew, if set, is the farm's MaxSkew, and the nodes give the
	// farm's strike register the tickets' real issue time. Otherwise the
	// register is told every ticket was issued an hour later: a farm's
	// register begins when it starts, so a ticket issued in its first
	// MaxSkew (default 5s) and one second would not carry early data, and
	// the tests without it are about replays, not about a register that
	// began after a ticket was issued (TestEarlyDataRefusedAfterStoreLoss).
	strikeSkew time.Duration
}

// startH3Farm starts o.n servers of one fresh farm over Redis, each with an
// HTTP/3 listener on loopback, sharing ticket keys and QUIC keys, with
// write-through, and farm-wide anti-replay.
func startH3Farm(t *testing.T, o h3FarmOptions) []*h3Node {
	t.Helper()
	url := o.redisURL
	if url == "" {
		url = redistest.URL(t)
	}
	name := redistest.Farm(t)
	secret := farm.NewSecret(1)
	if o.secret != nil {
		secret = *o.secret
	}
	keys, err := farm.DeriveQUICKeys(name, []farm.Secret{secret})
	if err != nil {
		t.Fatal(err)
	}
	cert := sharedH3Cert(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	var st ticket.State
	var out []*h3Node
	for i := range o.n {
		cache, err := session.New(&session.Config{Mode: o.mode, SingleUse: o.singleUse})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cache.Close() })
		ring, err := ticket.NewRing(ticket.RingConfig{Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			st = ring.State()
			st.Epoch += 100
		}
		if err := ring.Set(st); err != nil {
			t.Fatal(err)
		}
		tr, err := redisbus.Open(url, name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		node, err := farm.Join(context.Background(), farm.Config{
			Farm: name, NodeName: "n" + string(rune('1'+i)), Secrets: []farm.Secret{secret},
			Cache: cache, Bus: tr, Store: tr, WriteThrough: true,
			LookupTimeout:       2 * time.Second, // the strike's deadline; survives -race on a busy machine
			WriteThroughTimeout: time.Second,
			BreakerThreshold:    1000, // the store-down test wants every attempt to try
			MaxSkew:             o.strikeSkew,
			Logger:              log,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { node.Close() })
		antiReplay := AntiReplay(node.Strike)
		if o.strikeSkew == 0 {
			antiReplay = func(ctx context.Context, identity []byte, _ time.Time, ttl time.Duration) (bool, error) {
				return node.Strike(ctx, identity, time.Now().Add(time.Hour), ttl)
			}
		}
		cfg := Config{
			Node: "n" + string(rune('1'+i)), Cache: cache, Ring: ring, Logger: log,
			Listeners: []Listener{{
				Address: "127.0.0.1:0", Certificates: []Certificate{{Certificate: cert}},
				NextProtos: []string{"http/1.1"}, Upstream: o.upstream, HTTP3: true, EarlyData: o.earlyData && o.earlyOff != i+1,
				EarlyDataTrusted: o.earlyTrusted,
			}},
			AntiReplay:            antiReplay,
			QUICTokenKey:          &keys.TokenKey,
			QUICStatelessResetKey: &keys.StatelessResetKey,
			QUICValidateAddresses: o.validate,
			EarlyDataWindow:       o.window,
		}
		var s *Server
		for try := 0; ; try++ {
			if s, err = New(cfg); err != nil {
				t.Fatal(err)
			}
			if err = s.Start(); err == nil {
				break
			}
			// The TCP port's UDP twin may be taken by another process.
			s.Shutdown(context.Background())
			if try == 2 {
				t.Fatal(err)
			}
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			s.Shutdown(ctx)
		})
		ua, err := net.ResolveUDPAddr("udp", s.Addrs()[0])
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, &h3Node{s: s, cache: cache, node: node, addr: ua})
	}
	if o.earlyData && o.strikeSkew == 0 {
		// A node writes its strike register's markers on a goroutine
		// of its own as it joins; on a new farm that is a renewal, and
		// until it is done every strike is refused (store_lost), as it
		// should be. Under load it can outlast a first handshake and
		// its ticket (TestHTTP3EarlyRequestFromTrustedIntermediary's
		// first 0-RTT was refused so). The tests that set strikeSkew
		// wait for the markers themselves.
		for _, n := range out {
			try := 0
			eventually(t, n.s.node+"'s strike register primed", func() bool {
				try++
				ok, err := n.node.Strike(context.Background(), fmt.Appendf(nil, "primed? %d", try), time.Now().Add(time.Hour), time.Minute)
				return ok && err == nil
			})
		}
	}
	return out
}

var (
	h3CertOnce sync.Once
	h3Cert     *tls.Certificate
	h3CertErr  error
)

func sharedH3Cert(t testing.TB) *tls.Certificate {
	h3CertOnce.Do(func() { h3Cert, h3CertErr = SelfSigned("localhost") })
	if h3CertErr != nil {
		t.Fatal(h3CertErr)
	}
	return h3Cert
}

// pinnedCache is a client session cache that keeps the first session it is
// given and returns it for every later connection, so that a test can
// present one session (one ticket) many times, as a replaying attacker
// would.
type pinnedCache struct {
	mu  sync.Mutex
	ss  *tls.ClientSessionState
	got chan struct{}
}

func newPinnedCache() *pinnedCache { return &pinnedCache{got: make(chan struct{})} }

// Get returns a copy of the pinned session: quic-go changes the session
// state it is given, and concurrent connections each need their own.
func (c *pinnedCache) Get(string) (*tls.ClientSessionState, bool) {
	c.mu.Lock()
	ss := c.ss
	c.mu.Unlock()
	if ss == nil {
		return nil, false
	}
	ticket, state, err := ss.ResumptionState()
	if err != nil || state == nil {
		return nil, false
	}
	b, err := state.Bytes()
	if err != nil {
		return nil, false
	}
	cp, err := tls.ParseSessionState(b)
	if err != nil {
		return nil, false
	}
	out, err := tls.NewResumptionState(ticket, cp)
	return out, err == nil
}

func (c *pinnedCache) Put(_ string, cs *tls.ClientSessionState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ss == nil && cs != nil {
		c.ss = cs
		close(c.got)
	}
}

func (c *pinnedCache) wait(t testing.TB) {
	t.Helper()
	select {
	case <-c.got:
	case <-time.After(10 * time.Second):
		t.Fatal("no session ticket reached the client")
	}
}

// h3Client is a QUIC client with one UDP socket and a session cache.
type h3Client struct {
	tr     *quic.Transport
	tls    *tls.Config
	tokens quic.TokenStore
	header http.Header // sent with every request
}

func newH3Client(t testing.TB, cache tls.ClientSessionCache) *h3Client {
	t.Helper()
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: udp}
	t.Cleanup(func() { tr.Close(); udp.Close() })
	pool := x509.NewCertPool()
	pool.AddCert(sharedH3Cert(t).Leaf)
	return &h3Client{
		tr:     tr,
		tls:    &tls.Config{RootCAs: pool, ServerName: "localhost", NextProtos: []string{http3.NextProtoH3}, ClientSessionCache: cache},
		tokens: quic.NewLRUTokenStore(4, 4),
	}
}

// h3Result is what one HTTP/3 exchange saw.
type h3Result struct {
	status   int
	facts    Facts
	body     []byte
	header   http.Header
	resumed  bool
	used0RTT bool
}

// do dials addr (with 0-RTT when the cache holds a session that allows it),
// sends one request with method (a GET or HEAD is sent in 0-RTT; other
// methods too when early is set), and returns what it saw once the
// handshake is complete and the response read.
func (c *h3Client) do(t *testing.T, addr net.Addr, method, path string, early bool) h3Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn, err := c.tr.DialEarly(ctx, addr, c.tls, &quic.Config{TokenStore: c.tokens, HandshakeIdleTimeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("dial %v: %v", addr, err)
	}
	defer conn.CloseWithError(0, "")
	resp, err := c.send(ctx, conn, method, path, early)
	var refused *quic.ConnectionState // of a connection whose 0-RTT was refused
	if errors.Is(err, quic.Err0RTTRejected) {
		// The handshake goes on in 1-RTT: wait for it. Then, as a browser
		// does, send the request again after the handshake — on a new
		// (resumed, 1-RTT) connection, because quic-go's HTTP/3 client
		// cannot always reuse one whose 0-RTT streams were discarded (the
		// discarded client's control stream may come back as a second one).
		if conn, err = conn.NextConnection(ctx); err != nil {
			t.Fatalf("after 0-RTT was rejected: %v", err)
		}
		cs := conn.ConnectionState()
		refused = &cs
		conn.CloseWithError(0, "")
		if conn, err = c.tr.Dial(ctx, addr, c.tls, &quic.Config{TokenStore: c.tokens}); err != nil {
			t.Fatalf("dial %v again: %v", addr, err)
		}
		defer conn.CloseWithError(0, "")
		resp, err = c.send(ctx, conn, method, path, false)
	}
	if err != nil {
		t.Fatalf("%s %v: %v", method, addr, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-conn.HandshakeComplete():
	case <-ctx.Done():
		t.Fatal("handshake did not complete")
	}
	cs := conn.ConnectionState()
	if refused != nil {
		cs = *refused
	}
	r := h3Result{status: resp.StatusCode, body: body, header: resp.Header, resumed: cs.TLS.DidResume, used0RTT: cs.Used0RTT}
	if resp.Header.Get("Content-Type") == "application/json" {
		if err := json.Unmarshal(body, &r.facts); err != nil {
			t.Fatalf("facts: %v in %q", err, body)
		}
	}
	return r
}

// send sends one request on conn. With early set, the request goes out at
// once, in 0-RTT if the connection has it, and send returns
// quic.Err0RTTRejected if the server refused it. (It does not read the
// refused request's stream: after a rejection quic-go gives the same
// stream ID to the next stream, and http3's client resets a stream whose
// read fails.)
func (c *h3Client) send(ctx context.Context, conn *quic.Conn, method, path string, early bool) (*http.Response, error) {
	cc := (&http3.Transport{}).NewClientConn(conn)
	req, _ := http.NewRequestWithContext(ctx, method, "https://localhost"+path, nil)
	for k, v := range c.header {
		req.Header[k] = v
	}
	if !early {
		return cc.RoundTrip(req)
	}
	// http3's RoundTrip waits for the handshake before anything but GET
	// and HEAD; a request stream does not.
	str, err := cc.OpenRequestStream(ctx)
	if err != nil {
		return nil, err
	}
	if err := str.SendRequestHeader(req); err != nil {
		return nil, err
	}
	str.Close()
	select {
	case <-conn.HandshakeComplete():
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if !conn.ConnectionState().Used0RTT {
		return nil, quic.Err0RTTRejected
	}
	return str.ReadResponse()
}

// A relay is a UDP relay between one client and a QUIC server, under the
// test's control. Tests send 0-RTT through one even when they need nothing
// else from it: it lets the client send its whole first flight before the
// server answers, which sidesteps a data race in quic-go's client (opening
// a 0-RTT stream while it takes in the server's transport parameters) that
// the race detector can otherwise catch under load. It also records what
// the client sends, can hold back the client's handshake completion, counts
// Retry packets, and can replay the client's first flight verbatim to any
// server.
type relay struct {
	t      *testing.T
	front  *net.UDPConn // the client talks to this
	back   *net.UDPConn // this talks to the server
	target atomic.Pointer[net.UDPAddr]
	client atomic.Pointer[net.UDPAddr]
	hold   time.Duration // delay for client datagrams from its first Handshake packet on

	mu      sync.Mutex
	flight  [][]byte // client datagrams that start with an Initial or 0-RTT packet
	retries atomic.Int32
}

// QUIC v1 long header packet types (RFC 9000 §17.2), from the first byte.
const (
	longInitial   = 0xc0
	long0RTT      = 0xd0
	longHandshake = 0xe0
	longRetry     = 0xf0
)

func longType(b []byte) byte {
	if len(b) == 0 || b[0]&0x80 == 0 {
		return 0
	}
	return b[0] & 0xf0
}

// hasHandshakePacket reports whether a datagram holds a Handshake packet
// among its coalesced long header packets (RFC 9000 §12.2, §17.2).
func hasHandshakePacket(b []byte) bool {
	for len(b) > 7 && b[0]&0x80 != 0 {
		typ := b[0] & 0xf0
		if typ == longHandshake {
			return true
		}
		if typ == longRetry {
			return false
		}
		p := 5
		for range 2 { // destination and source connection IDs
			if p >= len(b) {
				return false
			}
			p += 1 + int(b[p])
		}
		if typ == longInitial {
			n, l := varint(b[min(p, len(b)):])
			if l == 0 {
				return false
			}
			p += l + int(n)
		}
		if p >= len(b) {
			return false
		}
		n, l := varint(b[p:])
		if l == 0 {
			return false
		}
		p += l + int(n)
		if p > len(b) {
			return false
		}
		b = b[p:]
	}
	return false
}

// dcid returns the destination connection ID of a long header packet.
func dcid(b []byte) []byte {
	if len(b) < 6 || len(b) < 6+int(b[5]) {
		return nil
	}
	return b[6 : 6+int(b[5])]
}

// varint decodes a QUIC variable-length integer, returning its length (0
// if b is too short).
func varint(b []byte) (uint64, int) {
	if len(b) == 0 {
		return 0, 0
	}
	l := 1 << (b[0] >> 6)
	if len(b) < l {
		return 0, 0
	}
	v := uint64(b[0] & 0x3f)
	for _, c := range b[1:l] {
		v = v<<8 | uint64(c)
	}
	return v, l
}

func newRelay(t *testing.T, target *net.UDPAddr, hold time.Duration) *relay {
	t.Helper()
	lo := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
	front, err := net.ListenUDP("udp", lo)
	if err != nil {
		t.Fatal(err)
	}
	back, err := net.ListenUDP("udp", lo)
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{t: t, front: front, back: back, hold: hold}
	r.target.Store(target)
	type delayed struct {
		at time.Time
		b  []byte
	}
	q := make(chan delayed, 1024)
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { // client -> server
		defer wg.Done()
		defer close(q)
		holding := false
		for {
			buf := make([]byte, 2048)
			n, from, err := front.ReadFromUDP(buf)
			if err != nil {
				return
			}
			b := buf[:n]
			r.client.Store(from)
			switch longType(b) {
			case longInitial, long0RTT:
				// The first flight: sent to the connection ID the client
				// chose, before it learnt the server's.
				r.mu.Lock()
				if len(r.flight) == 0 || bytes.Equal(dcid(b), dcid(r.flight[0])) {
					r.flight = append(r.flight, b)
				}
				r.mu.Unlock()
			}
			if hasHandshakePacket(b) {
				holding = hold > 0
			}
			at := time.Now()
			if holding {
				at = at.Add(hold)
			}
			q <- delayed{at, b}
		}
	}()
	go func() { // the client's datagrams, in order, each at its time
		defer wg.Done()
		for d := range q {
			time.Sleep(time.Until(d.at))
			back.WriteToUDP(d.b, r.target.Load())
		}
	}()
	go func() { // server -> client
		defer wg.Done()
		buf := make([]byte, 2048)
		first := true
		for {
			n, _, err := back.ReadFromUDP(buf)
			if err != nil {
				return
			}
			if first {
				// Let the client finish its first flight before it hears
				// from the server (and starts addressing the server's
				// connection ID), so that the flight is replayable whole.
				time.Sleep(150 * time.Millisecond)
				first = false
			}
			if longType(buf[:n]) == longRetry {
				r.retries.Add(1)
			}
			if c := r.client.Load(); c != nil {
				front.WriteToUDP(buf[:n], c)
			}
		}
	}()
	t.Cleanup(func() {
		front.Close()
		back.Close()
		wg.Wait()
	})
	return r
}

func (r *relay) addr() *net.UDPAddr { return r.front.LocalAddr().(*net.UDPAddr) }

// replay sends the client's first flight (its datagrams that start with an
// Initial or 0-RTT packet), byte for byte, to a server from a socket of its
// own, as an attacker on the path would.
func (r *relay) replay(to *net.UDPAddr) {
	r.t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { c.Close() })
	r.mu.Lock()
	flight := r.flight
	r.mu.Unlock()
	if len(flight) == 0 {
		r.t.Fatal("relay: nothing to replay")
	}
	for _, b := range flight {
		if _, err := c.WriteToUDP(b, to); err != nil {
			r.t.Fatal(err)
		}
	}
}

// eventually polls cond for up to 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
