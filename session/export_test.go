package session

// The errors Insert returns, for tests in package session_test.
var (
	ErrForgedID      = errForgedID
	ErrExpired       = errExpired
	ErrRevoked       = errRevoked
	ErrInvalidRecord = errInvalidRecord
)

// Sweep runs the sweep that the background sweep runs every SweepInterval.
func (c *Cache) Sweep() int { return c.sweep() }

// Reissue returns a reissued ticket for id, as a TLS 1.2 resumption gets.
func Reissue(c *Cache, id ID) []byte { return c.keys.Load().reissue(&id) }

// ChildLinks returns how many parents the cache links to their live child.
func ChildLinks(c *Cache) int {
	c.life.mu.Lock()
	defer c.life.mu.Unlock()
	return len(c.life.kids)
}
