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
