package proxy

import (
	"net"
	"sync"
	"sync/atomic"
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
