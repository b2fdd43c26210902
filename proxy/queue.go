package proxy

import (
	"net"
	"sync"
)

// A queue is the net.Listener through which handshaken connections reach
// the listener's http.Server.
type queue struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
	addr net.Addr
}

func newQueue() *queue {
	return &queue{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (q *queue) Accept() (net.Conn, error) {
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

func (q *queue) Close() error {
	q.once.Do(func() { close(q.done) })
	return nil
}

func (q *queue) Addr() net.Addr { return q.addr }

// push hands c to the HTTP server; it reports false once the queue is
// closed.
func (q *queue) push(c net.Conn) bool {
	select {
	case q.ch <- c:
		return true
	case <-q.done:
		return false
	}
}
