package proxy

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// A conn is an accepted connection: it gives back its listener's slot and
// leaves the server's set when closed, and remembers the ticket it was
// issued when Config.ExposeSessionID is on.
type conn struct {
	net.Conn
	l      *listener
	once   sync.Once
	ticket atomic.Pointer[[]byte]
	fresh  atomic.Bool // in Server.fresh

	websockets atomic.Int32 // open over HTTP/2 (admitWebSocket)

	idleWrites atomic.Bool // handed to HTTP: writes bounded by the idle timeout (Write)
	wmu        sync.Mutex
	wdl        time.Time // the write deadline set on c; zero: none

	writeTimedOut atomic.Bool // a write passed its deadline: Write refuses from then on
}

// errWriteTimedOut is what Write returns once a write to the client has
// passed its deadline.
var errWriteTimedOut = fmt.Errorf("proxy: an earlier write to the client timed out: %w", os.ErrDeadlineExceeded)

// Write writes to the client. On a connection handed to HTTP, unless a
// write deadline is set on c (one net/http or the idle bounds of http.go
// set), each write must make progress within the idle timeout: a client
// that stops reading would otherwise hold a write that nothing else
// bounds, and with it the connection, for ever (net/http's flush of an
// HTTP/1 response once its handler has returned, its error answers, the
// HTTP/2 server's frame writes). A passthrough connection has its own
// watch over both directions (see passthrough).
//
// Once a write has passed its deadline, whichever set it, every later
// write fails at once without touching the socket: the client is known
// not to read, and the TLS stream may end within a record. Above all,
// crypto/tls's Close then gives up close_notify at once, instead of
// holding the connection up to 5 seconds more for a write that cannot
// succeed (and whose alert would follow a record cut short).
func (c *conn) Write(p []byte) (int, error) {
	if c.writeTimedOut.Load() {
		return 0, errWriteTimedOut
	}
	if c.idleWrites.Load() {
		c.wmu.Lock()
		if c.wdl.IsZero() {
			c.Conn.SetWriteDeadline(time.Now().Add(c.l.s.idle))
		}
		c.wmu.Unlock()
	}
	n, err := c.Conn.Write(p)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		c.writeTimedOut.Store(true)
	}
	return n, err
}

// SetDeadline sets the read and write deadlines of c.
func (c *conn) SetDeadline(t time.Time) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wdl = t
	return c.Conn.SetDeadline(t)
}

// SetWriteDeadline sets the write deadline of c; the zero time gives the
// writes back their bound by the idle timeout (see Write).
func (c *conn) SetWriteDeadline(t time.Time) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wdl = t
	return c.Conn.SetWriteDeadline(t)
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		if c.l.sem != nil {
			<-c.l.sem
		}
		c.l.s.handedOff(c, true)
		c.l.s.untrack(c)
	})
	return err
}

// SyscallConn makes c a syscall.Conn, so that the session cache can tell
// whether c is closed: the single-use claim of a handshake that failed
// after resuming is then released within the cache's settle delay, not
// kept for its report. It reaches the socket under a PROXY protocol
// reader too.
//
// The RawConn returned only controls the socket. Its Read and Write
// refuse: bytes moved on the socket directly would bypass c (the PROXY
// protocol reader buffers what follows the header), and with them the
// zero-copy paths of net and os that look for a syscall.Conn.
func (c *conn) SyscallConn() (syscall.RawConn, error) {
	nc := c.Conn
	if pc, ok := nc.(*proxyproto.Conn); ok {
		nc = pc.Raw()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil, errors.ErrUnsupported
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	return controlOnly{rc}, nil
}

// errRawIO is the error of a controlOnly's Read and Write.
var errRawIO = errors.New("proxy: reading or writing a connection's socket directly is not supported")

// A controlOnly is a syscall.RawConn that allows Control only.
type controlOnly struct{ rc syscall.RawConn }

func (r controlOnly) Control(f func(fd uintptr)) error { return r.rc.Control(f) }
func (controlOnly) Read(func(fd uintptr) bool) error   { return errRawIO }
func (controlOnly) Write(func(fd uintptr) bool) error  { return errRawIO }
