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
// Cache.SetCarry) instead of calling Load, and HitChecker, to hold back a
// session the cache holds while what the farm may have said about it has
// not reached the cache.
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
	hc      HitChecker // f, if it is one
	timeout time.Duration
}

// A HitChecker is a Farm that may hold back a session the cache holds
// from resuming while the farm's messages to this server lag (or do not
// arrive at all): a revocation made elsewhere may not have reached the
// cache yet.
//
// For each session a handshake finds in the cache (and would resume), the
// cache calls HitsCurrent; only if it reports false does it call
// CheckHit, and it resumes the session only if CheckHit reports true. A
// session CheckHit holds back is a miss: the handshake is a full one. A
// SingleUse cache asks neither (its claim is taken from the farm).
type HitChecker interface {
	// HitsCurrent reports whether everything the farm may have said
	// about the cache's sessions by now has reached the cache, so that a
	// session it holds resumes without asking. It is called for every
	// cache hit of a handshake, on its goroutine: it must not block, and
	// should cost little more than an atomic load and a clock read.
	HitsCurrent() bool

	// CheckHit reports whether the cached session id, of the resumption
	// chain chain, may resume, as far as the farm can tell now (its store
	// does not hold the chain revoked, say). It is called on the
	// handshake's goroutine, with a context that ends after Join's
	// timeout, only when HitsCurrent reported false.
	CheckHit(ctx context.Context, id ID, chain uint64) bool
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
	box.hc, _ = f.(HitChecker)
	c.farm.Store(box)
	return func() { c.farm.CompareAndSwap(box, nil) }
}
