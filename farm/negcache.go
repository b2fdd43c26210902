package farm

import (
	"sync"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// Defaults of the negative cache (Config.NegativeCacheSize and
// Config.NegativeCacheTTL).
const (
	defaultNegativeCacheSize = 65536
	defaultNegativeCacheTTL  = 2 * time.Second
)

// negCache remembers, for a short while, the session IDs the store did not
// have, so that a dead ID presented again (a client retrying an expired
// ticket, up to five identities per TLS 1.3 hello) costs no round trip. It
// holds at most size IDs: a full cache forgets its oldest entry first. An
// ID the farm inserts is forgotten at once.
//
// The TTL is short because a miss can be premature: a peer's store write
// may land just after this node looked. In broadcast mode the peer's
// message inserts the session and clears the entry; in store-only mode the
// client makes one full handshake at worst.
type negCache struct {
	ttl time.Duration

	mu    sync.Mutex
	until map[session.ID]int64 // unix nanoseconds
	ring  []session.ID         // insertion order, for eviction
	next  int                  // ring slot to write next
}

func newNegCache(size int, ttl time.Duration) *negCache {
	return &negCache{ttl: ttl, until: make(map[session.ID]int64, min(size, 1024)), ring: make([]session.ID, size)}
}

// has reports whether id missed in the store within the TTL.
func (c *negCache) has(id session.ID, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	u, ok := c.until[id]
	if ok && now.UnixNano() >= u {
		delete(c.until, id)
		return false
	}
	return ok
}

// add remembers that the store did not have id.
func (c *negCache) add(id session.ID, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.addLocked(id, now)
}

func (c *negCache) addLocked(id session.ID, now time.Time) {
	if _, ok := c.until[id]; !ok {
		// Evict whatever the slot held (it may already be gone).
		delete(c.until, c.ring[c.next])
		c.ring[c.next] = id
		c.next = (c.next + 1) % len(c.ring)
	}
	c.until[id] = now.Add(c.ttl).UnixNano()
}

// since reports when id was last added, if it is still remembered.
func (c *negCache) since(id session.ID, now time.Time) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	u, ok := c.until[id]
	if !ok || now.UnixNano() >= u {
		return time.Time{}, false
	}
	return time.Unix(0, u).Add(-c.ttl), true
}

// remove forgets id: the farm has inserted it.
func (c *negCache) remove(id session.ID) {
	c.mu.Lock()
	delete(c.until, id)
	c.mu.Unlock()
}

func (c *negCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.until)
}
