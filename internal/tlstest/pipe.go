package tlstest

import (
	"crypto/tls"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// Pipe returns the two ends of an in-memory, buffered, full-duplex
// connection. Unlike net.Pipe, writes do not wait for the reader, so a TLS
// 1.3 server can send its ticket while the client sends its Finished; and
// unlike a socket, it costs no system call, so handshake benchmarks measure
// TLS and the cache, not the kernel.
func Pipe() (net.Conn, net.Conn) {
	a, b := newHalf(), newHalf()
	return &pipeConn{r: a, w: b}, &pipeConn{r: b, w: a}
}

// half is one direction of a Pipe.
type half struct {
	mu     sync.Mutex
	cond   sync.Cond
	buf    []byte
	closed bool
}

func newHalf() *half {
	h := &half{}
	h.cond.L = &h.mu
	return h
}

type pipeConn struct {
	r, w *half
}

func (p *pipeConn) Read(b []byte) (int, error) {
	h := p.r
	h.mu.Lock()
	defer h.mu.Unlock()
	for len(h.buf) == 0 {
		if h.closed {
			return 0, io.EOF
		}
		h.cond.Wait()
	}
	n := copy(b, h.buf)
	h.buf = h.buf[n:]
	if len(h.buf) == 0 {
		h.buf = h.buf[:0:0]
	}
	return n, nil
}

func (p *pipeConn) Write(b []byte) (int, error) {
	h := p.w
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return 0, io.ErrClosedPipe
	}
	h.buf = append(h.buf, b...)
	h.cond.Broadcast()
	return len(b), nil
}

func (p *pipeConn) Close() error {
	for _, h := range []*half{p.r, p.w} {
		h.mu.Lock()
		h.closed = true
		h.cond.Broadcast()
		h.mu.Unlock()
	}
	return nil
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

func (p *pipeConn) LocalAddr() net.Addr  { return pipeAddr{} }
func (p *pipeConn) RemoteAddr() net.Addr { return pipeAddr{} }

// Deadlines are not supported: a pipe is for benchmarks whose both ends
// make progress.
func (p *pipeConn) SetDeadline(time.Time) error      { return os.ErrNoDeadline }
func (p *pipeConn) SetReadDeadline(time.Time) error  { return os.ErrNoDeadline }
func (p *pipeConn) SetWriteDeadline(time.Time) error { return os.ErrNoDeadline }

// PipeHandshake makes one TLS connection over a Pipe between a server with
// srv and a client with cli: both handshakes, one byte from the server (so a
// TLS 1.3 client takes in its ticket), then close. onServer, if not nil, is
// called on the server's connection after its handshake. It returns the
// client's view of the connection.
func PipeHandshake(srv, cli *tls.Config, onServer func(*tls.Conn)) (tls.ConnectionState, error) {
	sc, cc := Pipe()
	errc := make(chan error, 1)
	go func() {
		s := tls.Server(sc, srv)
		defer s.Close()
		if err := s.Handshake(); err != nil {
			errc <- err
			return
		}
		if onServer != nil {
			onServer(s)
		}
		_, err := s.Write([]byte{'!'})
		errc <- err
	}()
	c := tls.Client(cc, cli)
	defer c.Close()
	var one [1]byte
	if _, err := io.ReadFull(c, one[:]); err != nil {
		<-errc
		return tls.ConnectionState{}, err
	}
	if err := <-errc; err != nil {
		return tls.ConnectionState{}, err
	}
	return c.ConnectionState(), nil
}
