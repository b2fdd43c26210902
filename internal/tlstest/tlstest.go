// Package tlstest holds helpers for tests that make real TLS handshakes over
// loopback sockets: a self-signed certificate, a server that answers each
// connection with its facts, client configurations, and client session caches
// that model clients which keep or drop re-issued tickets.
package tlstest

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// SharedCert returns one certificate for "localhost", "a.example",
// "b.example" and 127.0.0.1, made once per test binary, and a pool that
// trusts it: servers that must resume each other's sessions present the same
// certificate, as the servers of one farm do.
var SharedCert = sync.OnceValues(func() (tls.Certificate, *x509.CertPool) {
	cert, pool, err := newCert([]string{"localhost", "a.example", "b.example"})
	if err != nil {
		panic(err)
	}
	return cert, pool
})

// Cert returns a self-signed ECDSA P-256 certificate for the given DNS names
// (default "localhost") and 127.0.0.1, and a pool that trusts it.
func Cert(tb testing.TB, names ...string) (tls.Certificate, *x509.CertPool) {
	tb.Helper()
	if len(names) == 0 {
		names = []string{"localhost"}
	}
	cert, pool, err := newCert(names)
	if err != nil {
		tb.Fatal(err)
	}
	return cert, pool
}

func newCert(names []string) (tls.Certificate, *x509.CertPool, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: names[0]},
		DNSNames:              names,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool, nil
}

// A Server accepts TLS connections on a loopback port. For each connection it
// completes the handshake, calls OnHandshake, writes one line of facts
// ("node=... version=... resumed=..."), and closes.
type Server struct {
	Addr string
	Name string

	ln     net.Listener
	wg     sync.WaitGroup
	mu     sync.Mutex
	failed []error
	open   int // connections accepted and not yet ended
	ended  int // connections that ended after the server's line
}

// Serve starts a server named name with cfg until the test ends. onHandshake
// may be nil.
func Serve(tb testing.TB, name string, cfg *tls.Config, onHandshake func(*tls.Conn)) *Server {
	tb.Helper()
	return serve(tb, name, cfg, onHandshake, false)
}

// ServeAndClose is Serve for clients that read until the server closes, such
// as openssl s_client -ign_eof: the server closes after its line.
func ServeAndClose(tb testing.TB, name string, cfg *tls.Config, onHandshake func(*tls.Conn)) *Server {
	tb.Helper()
	return serve(tb, name, cfg, onHandshake, true)
}

func serve(tb testing.TB, name string, cfg *tls.Config, onHandshake func(*tls.Conn), closeAfter bool) *Server {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	s := &Server{Addr: ln.Addr().String(), Name: name, ln: ln}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			raw, err := ln.Accept()
			if err != nil {
				return
			}
			s.wg.Add(1)
			s.mu.Lock()
			s.open++
			s.mu.Unlock()
			go func() {
				defer s.wg.Done()
				lined := s.handle(tls.Server(raw, cfg), onHandshake, closeAfter)
				s.mu.Lock()
				s.open--
				if lined {
					s.ended++
				}
				s.mu.Unlock()
			}()
		}
	}()
	tb.Cleanup(s.Close)
	return s
}

// handle serves one connection and reports whether the server's line was
// written (and, unless closeAfter, the client then closed).
func (s *Server) handle(c *tls.Conn, onHandshake func(*tls.Conn), closeAfter bool) bool {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := c.Handshake(); err != nil {
		s.mu.Lock()
		s.failed = append(s.failed, err)
		s.mu.Unlock()
		return false
	}
	if onHandshake != nil {
		onHandshake(c)
	}
	cs := c.ConnectionState()
	if _, err := fmt.Fprintf(c, "node=%s version=%s resumed=%t sni=%s\n", s.Name, tls.VersionName(cs.Version), cs.DidResume, cs.ServerName); err != nil {
		return false
	}
	if closeAfter {
		return true
	}
	// Wait for the client to close, so the ticket (sent after the TLS 1.3
	// handshake) is read before the connection goes away.
	io.Copy(io.Discard, c)
	return true
}

// Open returns the number of connections the server has accepted that have
// not ended yet.
func (s *Server) Open() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.open
}

// Ended returns the number of connections that ended after the server wrote
// its line: with Serve, connections the client closed (or left) after the
// line; with ServeAndClose, connections the server closed after it. A
// handshake the server completed is not yet a connection the client has
// finished: the client may still be reading the server's Finished or line.
func (s *Server) Ended() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ended
}

// Close stops the server and waits for its connections to end.
func (s *Server) Close() {
	s.ln.Close()
	s.wg.Wait()
}

// HandshakeErrors returns the handshakes that failed on the server.
func (s *Server) HandshakeErrors() []error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]error(nil), s.failed...)
}

// ServerHandshakeStacks returns the stacks of this process's goroutines
// that are in a TLS server handshake, for a test to say where a handshake
// that takes too long waits.
func ServerHandshakeStacks() string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var b strings.Builder
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, "crypto/tls.(*Conn).serverHandshake") {
			b.WriteString(g)
			b.WriteString("\n\n")
		}
	}
	return b.String()
}

// ClientConfig returns a client configuration that trusts pool, pins version
// (0 for any), and uses cache for resumption.
func ClientConfig(pool *x509.CertPool, serverName string, version uint16, cache tls.ClientSessionCache) *tls.Config {
	return &tls.Config{
		RootCAs:            pool,
		ServerName:         serverName,
		MinVersion:         version,
		MaxVersion:         version,
		ClientSessionCache: cache,
	}
}

// Dial connects to addr, completes the handshake, reads the server's line
// (which also takes in a TLS 1.3 ticket), and returns the connection state.
func Dial(addr string, cfg *tls.Config) (tls.ConnectionState, error) {
	return DialWithin(addr, cfg, 5*time.Second)
}

// DialWithin is Dial with the connection and handshake bounded by timeout,
// for tests whose servers may wait on a slowed store path within their
// bounds on a loaded machine.
func DialWithin(addr string, cfg *tls.Config, timeout time.Duration) (tls.ConnectionState, error) {
	d := &net.Dialer{Timeout: timeout}
	c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return tls.ConnectionState{}, fmt.Errorf("reading server line: %w", err)
	}
	if !strings.HasPrefix(line, "node=") {
		return tls.ConnectionState{}, errors.New("unexpected server line: " + line)
	}
	return c.ConnectionState(), nil
}

// MustDial is Dial that fails the test on error.
func MustDial(tb testing.TB, addr string, cfg *tls.Config) tls.ConnectionState {
	tb.Helper()
	cs, err := Dial(addr, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return cs
}

// FrozenCache is a client session cache that keeps the first session it is
// given and ignores every later one, for any server: a client that presents
// the same ticket again and again, under whatever server name it dials.
type FrozenCache struct {
	mu sync.Mutex
	cs *tls.ClientSessionState
}

// Get implements tls.ClientSessionCache.
func (f *FrozenCache) Get(string) (*tls.ClientSessionState, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cs, f.cs != nil
}

// Put implements tls.ClientSessionCache.
func (f *FrozenCache) Put(_ string, cs *tls.ClientSessionState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cs == nil && cs != nil {
		f.cs = cs
	}
}

// SharedCache is a client session cache that keeps the newest session it is
// given and offers it for every server, like a client behind a load balancer
// that reaches several servers under one name.
type SharedCache struct {
	mu sync.Mutex
	cs *tls.ClientSessionState
}

// Get implements tls.ClientSessionCache.
func (s *SharedCache) Get(string) (*tls.ClientSessionState, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cs, s.cs != nil
}

// Put implements tls.ClientSessionCache.
func (s *SharedCache) Put(_ string, cs *tls.ClientSessionState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cs != nil {
		s.cs = cs
	}
}

// NoResume is a client session cache that never offers a session but lets
// the client receive tickets, so that the server issues one on every full
// handshake, as it does for real clients.
type NoResume struct{}

// Get implements tls.ClientSessionCache: there is never a session to offer.
func (NoResume) Get(string) (*tls.ClientSessionState, bool) { return nil, false }

// Put implements tls.ClientSessionCache: it forgets the session.
func (NoResume) Put(string, *tls.ClientSessionState) {}
