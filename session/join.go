package session

import (
	"context"
	"time"
)

// A Farm is the rest of a farm of servers, as a cache that joined it sees
// it (see Cache.Join): where a session that is not in the cache may be found, and,
// for a SingleUse cache, who decides that a session resumes once in the
// whole farm. Package farm provides one.
//
// The rule for single use (see docs/farm.md): a single-use session is
// claimed when a handshake finds it, before the handshake may resume it.
// The claim is taken first in this cache (so that concurrent handshakes on
// this server cannot both resume it) and then from the Farm. A claim that
// either refuses, or that fails, means a full handshake. When the handshake
// completes having resumed the session, the session is retired (EventRemove
// with Retired and OriginHandshake); when it fails, or completes without
// resuming it, the claim is released, locally and with Release, so that
// whoever failed the handshake cannot burn the session.
//
// A Farm may also implement CarriedAdmitter, to let the cache resume a
// session it does not hold from the copy a carried ticket brings (see
// Cache.SetCarry) instead of calling Load.
type Farm interface {
	// Load returns the session id, which a client presented and which is
	// not in the cache, or (nil, nil) if the farm does not have it either.
	// It is called only for authenticated IDs, on the handshake's
	// goroutine, with a context that ends after Join's timeout. A record
	// it returns is inserted with OriginLoader.
	Load(ctx context.Context, id ID) (*Record, error)

	// Claim takes the single-use session id for one handshake and reports
	// whether it did. Of all the concurrent claims of one session, on every
	// cache of the farm, at most one may succeed until the session is
	// released. It runs on the handshake's goroutine, which it holds up: it
	// bounds its own wait (ctx ends only with the handshake). It is called
	// only by a SingleUse cache.
	Claim(ctx context.Context, id ID) (bool, error)

	// Release gives back a claim whose handshake did not resume the
	// session; r is the session's record as the cache holds it. It must
	// not block: it is called from the cache's goroutines.
	Release(id ID, r Record)
}

type farmBox struct {
	f       Farm
	timeout time.Duration
}

// Join makes the cache ask f for the sessions it does not hold, each call
// of f.Load bounded by timeout (0 means 5 milliseconds), and, if the cache
// is SingleUse, take single-use claims from f after its own. A cache joins
// at most one farm: Join replaces any earlier one. The function it returns
// leaves the farm; the sessions the farm provided stay cached.
func (c *Cache) Join(f Farm, timeout time.Duration) (leave func()) {
	if timeout <= 0 {
		timeout = defaultLoadTimeout
	}
	box := &farmBox{f: f, timeout: timeout}
	c.farm.Store(box)
	return func() { c.farm.CompareAndSwap(box, nil) }
}
