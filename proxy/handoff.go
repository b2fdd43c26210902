package proxy

import (
	"net"
	"sync"
)

// A handoffListener is the net.Listener that a listener's http.Server
// serves: Accept returns the connections that the listener's accept loop
// has already taken through the TLS handshake and routed to HTTP (see
// listener.handle), handed over one at a time by push.
type handoffListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
	addr net.Addr
}

func newHandoffListener() *handoffListener {
	return &handoffListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (h *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-h.ch:
		return c, nil
	case <-h.done:
		return nil, net.ErrClosed
	}
}

func (h *handoffListener) Close() error {
	h.once.Do(func() { close(h.done) })
	return nil
}

func (h *handoffListener) Addr() net.Addr { return h.addr }

// push hands c to the HTTP server; it reports false once the listener is
// closed.
func (h *handoffListener) push(c net.Conn) bool {
	select {
	case h.ch <- c:
		return true
	case <-h.done:
		return false
	}
}
