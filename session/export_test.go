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
