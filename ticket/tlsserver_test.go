package ticket_test

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/ticket"
)

// serverConfig returns a server config with the test certificate
// (tlstest.SharedCert, for "localhost" among others) and stateless tickets
// (crypto/tls's default ticket path).
func serverConfig(tb testing.TB) *tls.Config {
	cert, _ := tlstest.SharedCert()
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
	}
}

// clientConfig returns a client config that speaks only version and keeps its
// sessions in cache. Every client config names "localhost", so one cache
// serves every test server.
func clientConfig(tb testing.TB, version uint16, cache tls.ClientSessionCache) *tls.Config {
	_, pool := tlstest.SharedCert()
	return tlstest.ClientConfig(pool, "localhost", version, cache)
}

// startServer serves TLS with cfg on a loopback port until the test ends, and
// returns its address. Each connection completes its handshake, writes one
// byte (so a TLS 1.3 client, reading it, also reads the NewSessionTicket sent
// before it), then waits for the client to close.
func startServer(tb testing.TB, cfg *tls.Config) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				conn := tls.Server(c, cfg)
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(10 * time.Second))
				if err := conn.Handshake(); err != nil {
					return
				}
				if _, err := conn.Write([]byte{1}); err != nil {
					return
				}
				io.Copy(io.Discard, conn)
			})
		}
	})
	tb.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// connect makes one TLS connection to addr, reads the server's byte, closes,
// and reports whether the session was resumed. It must run on the test's
// goroutine; other goroutines use dial.
func connect(tb testing.TB, addr string, cfg *tls.Config) bool {
	tb.Helper()
	resumed, err := dial(addr, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return resumed
}

// dial is connect for any goroutine.
func dial(addr string, cfg *tls.Config) (resumed bool, err error) {
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: cfg}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return false, fmt.Errorf("dial %s: %w", addr, err)
	}
	conn := c.(*tls.Conn)
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	var b [1]byte
	if _, err := io.ReadFull(conn, b[:]); err != nil {
		return false, fmt.Errorf("reading from %s: %w", addr, err)
	}
	return conn.ConnectionState().DidResume, nil
}

// frozenCache is a ClientSessionCache that keeps the first session it is
// given and ignores every later Put, so a client keeps presenting one ticket
// however many new ones servers issue.
type frozenCache struct {
	mu  sync.Mutex
	key string
	cs  *tls.ClientSessionState
}

func (c *frozenCache) Get(key string) (*tls.ClientSessionState, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cs == nil || key != c.key {
		return nil, false
	}
	return c.cs, true
}

func (c *frozenCache) Put(key string, cs *tls.ClientSessionState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cs == nil && cs != nil {
		c.key, c.cs = key, cs
	}
}

// ticket returns the frozen ticket, or nil.
func (c *frozenCache) ticket(tb testing.TB) []byte {
	tb.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	t, _, err := c.cs.ResumptionState()
	if err != nil {
		tb.Fatal(err)
	}
	return t
}

// captureSession performs one handshake with a server whose WrapSession
// captures the server-side session state, and returns that state. Tests use
// it with Config.EncryptTicket and Config.DecryptTicket to see which keys a
// config holds without a handshake per question.
func captureSession(tb testing.TB) *tls.SessionState {
	tb.Helper()
	var (
		mu sync.Mutex
		ss *tls.SessionState
	)
	cfg := serverConfig(tb)
	cfg.WrapSession = func(cs tls.ConnectionState, s *tls.SessionState) ([]byte, error) {
		mu.Lock()
		if ss == nil {
			ss = s
		}
		mu.Unlock()
		return cfg.EncryptTicket(cs, s)
	}
	connect(tb, startServer(tb, cfg), clientConfig(tb, tls.VersionTLS13, tls.NewLRUClientSessionCache(1)))
	mu.Lock()
	defer mu.Unlock()
	if ss == nil {
		tb.Fatal("the server wrapped no session")
	}
	return ss
}

// encryptsWith returns the candidate key cfg encrypts new tickets with, or
// the zero Key if none of them.
func encryptsWith(tb testing.TB, cfg *tls.Config, ss *tls.SessionState, candidates []ticket.Key) ticket.Key {
	tb.Helper()
	t, err := cfg.EncryptTicket(tls.ConnectionState{}, ss)
	if err != nil {
		tb.Fatal(err)
	}
	for _, k := range candidates {
		probe := &tls.Config{}
		probe.SetSessionTicketKeys([][32]byte{k})
		if s, _ := probe.DecryptTicket(t, tls.ConnectionState{}); s != nil {
			return k
		}
	}
	return ticket.Key{}
}

// decrypts reports whether cfg accepts a ticket encrypted under k.
func decrypts(tb testing.TB, cfg *tls.Config, ss *tls.SessionState, k ticket.Key) bool {
	tb.Helper()
	probe := &tls.Config{}
	probe.SetSessionTicketKeys([][32]byte{k})
	t, err := probe.EncryptTicket(tls.ConnectionState{}, ss)
	if err != nil {
		tb.Fatal(err)
	}
	s, err := cfg.DecryptTicket(t, tls.ConnectionState{})
	if err != nil {
		tb.Fatal(err)
	}
	return s != nil
}

// checkConfigKeys fails the test unless cfg encrypts with want.Current and
// decrypts exactly want.Keys() among the candidates.
func checkConfigKeys(tb testing.TB, cfg *tls.Config, ss *tls.SessionState, want ticket.State, candidates []ticket.Key) {
	tb.Helper()
	if got := encryptsWith(tb, cfg, ss, candidates); got != want.Current {
		tb.Errorf("config encrypts with %v, want %v", got, want.Current)
	}
	in := make(map[ticket.Key]bool)
	for _, k := range want.Keys() {
		in[k] = true
	}
	for _, k := range candidates {
		if got := decrypts(tb, cfg, ss, k); got != in[k] {
			tb.Errorf("config decrypts %v: %v, want %v", k, got, in[k])
		}
	}
}
