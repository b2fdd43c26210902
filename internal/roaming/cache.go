// Package roaming is the client side of a farm test or benchmark: one
// client's TLS session cache, for a client that a load balancer sends to a
// different server each time.
package roaming

import (
	"context"
	"crypto/tls"
	"sync"
	"time"
)

// A SessionCache is one simulated client's session cache. It keeps the
// newest session, whatever the target, and remembers which target issued
// it, so a resumption can be told to be cross-node.
//
// crypto/tls calls Get and Put on the goroutine doing the handshake or
// read, which is the worker's, one connection at a time; the mutex only
// makes that safe to rely on.
type SessionCache struct {
	mu      sync.Mutex
	cs      *tls.ClientSessionState
	issuer  int // target that issued cs
	current int // target of the connection in progress

	offered     bool // Get handed out a session during this connection
	offeredFrom int  // its issuer
	handedOut   bool // as offered, but not undone by Put(nil)

	put chan struct{} // signalled by Put (HTTP/3 waits for its ticket)
}

// Begin starts a connection to target.
func (c *SessionCache) Begin(target int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.current, c.offered, c.handedOut = target, false, false
	if c.put == nil {
		c.put = make(chan struct{}, 1)
	}
	select {
	case <-c.put:
	default:
	}
}

// WaitPut waits until a session is put during this connection, at most d
// or until ctx ends.
func (c *SessionCache) WaitPut(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-c.put:
	case <-t.C:
	case <-ctx.Done():
	}
}

// Offer reports whether the connection in progress was offered a session,
// and which target issued it.
func (c *SessionCache) Offer() (bool, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.offered, c.offeredFrom
}

// HandedOut reports whether Get handed out a session during the
// connection in progress, even one that crypto/tls dropped since (Put of
// nil). After a failed handshake that is the question to ask: crypto/tls
// drops a session it offered in a handshake that failed, so Offer says
// false. It also drops, before offering it, a session it finds expired;
// HandedOut cannot tell that from an offer.
func (c *SessionCache) HandedOut() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.handedOut
}

// Get implements tls.ClientSessionCache. The key is ignored: one client
// behind one name has one session, whichever server it lands on.
func (c *SessionCache) Get(string) (*tls.ClientSessionState, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cs == nil {
		return nil, false
	}
	c.offered, c.offeredFrom, c.handedOut = true, c.issuer, true
	return c.cs, true
}

// Put implements tls.ClientSessionCache. crypto/tls puts nil to drop a
// session it will not offer (expired, or its handshake failed).
func (c *SessionCache) Put(_ string, cs *tls.ClientSessionState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cs == nil {
		c.cs, c.offered = nil, false
		return
	}
	c.cs, c.issuer = cs, c.current
	select {
	case c.put <- struct{}{}:
	default:
	}
}
