// Package nettest holds helpers for tests that talk to servers over
// loopback sockets: a TCP server that echoes, one that never answers, an
// address that refuses, a proxy the test can cut, freeze or slow down, and
// a one-shot HTTP request.
package nettest

import (
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Echo starts a TCP server on a loopback port that writes back whatever
// each connection sends, and closes the connection when the client closes
// its side. It stops when the test ends, and Echo returns its address.
func Echo(tb testing.TB) string {
	tb.Helper()
	ln := listen(tb)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	tb.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}

// Silent starts a TCP server on a loopback port that accepts connections
// and never says a word, like a server that hangs. It closes them and stops
// when the test ends, and Silent returns its address.
func Silent(tb testing.TB) string {
	tb.Helper()
	ln := listen(tb)
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	tb.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// Refused returns a loopback address at which connections are refused,
// until the test ends. It holds the port with a TCP socket that is bound
// but never listens, so no other listener (another test's server, in this
// process or another) can take the port meanwhile, and no outgoing
// connection is given it: a port found free and closed again can be,
// and a "refused" target then answers.
func Refused(tb testing.TB) string {
	tb.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		tb.Fatalf("nettest: socket: %v", err)
	}
	syscall.CloseOnExec(fd)
	tb.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		tb.Fatalf("nettest: bind: %v", err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		tb.Fatalf("nettest: getsockname: %v", err)
	}
	in, ok := sa.(*syscall.SockaddrInet4)
	if !ok {
		tb.Fatalf("nettest: a bound IPv4 socket named %T", sa)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(in.Port))
}

// A Proxy forwards the TCP connections made to its loopback address to a
// server, until the test cuts them (see Cut), as a network partition
// would: the server sees each connection closed, and the client sees its
// own closed and cannot connect again until Restore. Or the test freezes
// it (see Freeze), as a hung server would look: connections stay open and
// new ones are accepted, but no byte goes through either way until Thaw.
type Proxy struct {
	// Addr is the address to connect to instead of the server's.
	Addr string

	target string
	mu     sync.Mutex
	down   bool
	thawed chan struct{} // while frozen: closed by Thaw (or Cut)
	from   string        // while frozen: the client host frozen ("": every one; see FreezeFrom)
	conns  []net.Conn    // both ends of every connection forwarded
	delay  time.Duration // see SetLatency
	held   int           // reads waiting for a thaw (see Holding)
}

// NewProxy starts a Proxy to the server at target. It stops, closing its
// connections, when the test ends.
func NewProxy(tb testing.TB, target string) *Proxy {
	tb.Helper()
	ln := listen(tb)
	p := &Proxy{Addr: ln.Addr().String(), target: target}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.forward(c)
		}
	}()
	tb.Cleanup(func() {
		ln.Close()
		<-done
		p.Cut()
	})
	return p
}

func (p *Proxy) forward(c net.Conn) {
	p.mu.Lock()
	down := p.down
	p.mu.Unlock()
	if down {
		c.Close()
		return
	}
	s, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	if p.down {
		p.mu.Unlock()
		c.Close()
		s.Close()
		return
	}
	p.conns = append(p.conns, c, s)
	p.mu.Unlock()
	host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
	go p.pipe(s, c, host)
	go p.pipe(c, s, host)
}

// pipe copies from src to dst, holding what it reads while the proxy is
// frozen for the connection's client host, until either side closes.
func (p *Proxy) pipe(dst, src net.Conn, host string) {
	defer src.Close()
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			thawed, delay := p.thawed, p.delay
			if p.from != "" && p.from != host {
				thawed = nil
			}
			if thawed != nil {
				p.held++
			}
			p.mu.Unlock()
			if thawed != nil {
				<-thawed
				p.mu.Lock()
				p.held--
				p.mu.Unlock()
			}
			if delay > 0 {
				time.Sleep(delay)
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// Freeze stops every byte, both ways, on every connection, without closing
// any, until Thaw or Cut: to the client the server has hung.
func (p *Proxy) Freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.thawed == nil {
		p.thawed = make(chan struct{})
	}
	p.from = ""
}

// FreezeFrom is Freeze for the connections whose client is at the
// loopback address host (such as "127.0.0.2", which a server made to
// connect from it with its own connections: a replica's link to its
// master, say), and for no others: their bytes go through.
func (p *Proxy) FreezeFrom(host string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.thawed == nil {
		p.thawed = make(chan struct{})
		p.from = host
	}
}

// Holding reports how many reads, either way, the proxy holds for a thaw:
// a test that freezes it can wait until a request it makes is held.
func (p *Proxy) Holding() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.held
}

// SetLatency holds each read the proxy forwards, either way, for d before
// passing it on (0: none), as a slow or distant server would look: a
// request and its answer take 2d more.
func (p *Proxy) SetLatency(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.delay = d
}

// Thaw lets the bytes held since Freeze, and those after, go through.
func (p *Proxy) Thaw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.thawed != nil {
		close(p.thawed)
		p.thawed = nil
	}
}

// Cut closes every connection forwarded so far and refuses new ones until
// Restore. It ends a freeze.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
	if p.thawed != nil {
		close(p.thawed)
		p.thawed = nil
	}
}

// Drop closes every connection forwarded so far, as Cut does, but goes
// on forwarding new ones: to the client, the connections it had were
// lost, and the server is there on a new one. It ends a freeze.
func (p *Proxy) Drop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
	if p.thawed != nil {
		close(p.thawed)
		p.thawed = nil
	}
}

// Restore forwards new connections again.
func (p *Proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = false
}

func listen(tb testing.TB) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	return ln
}

// Do makes one HTTP request, with bearer as its bearer token unless it is
// empty, and returns the answer's status code and body.
func Do(tb testing.TB, method, url, bearer string) (int, string) {
	tb.Helper()
	req, _ := http.NewRequest(method, url, nil)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
