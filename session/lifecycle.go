package session

import (
	"iter"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// lifecycle is the cache's state for single use and bounded children.
type lifecycle struct {
	mu     sync.Mutex
	claims map[ID]*claim    // single-use sessions held by a handshake in progress
	kids   map[ID]childLink // parent -> its live child, while the parent is in its grace

	busy, refused, released, late, replaced atomic.Uint64

	fallback       atomic.Int64 // fallback ticket lifetime; 0: off
	acceptTickets  atomic.Bool  // a Stateful cache accepts the farm's tickets
	fallbackIssued atomic.Uint64
	carry          atomic.Bool // issue carried tickets (SetCarry)
}

type childLink struct {
	child   ID
	expires int64 // the child's expiry: the newer child wins
	until   int64 // forget the link after this (the parent is gone by then)
	local   bool  // child was issued by a handshake on this server
}

// Retire removes the single session id (not its chain), firing EventRemove
// with Retired and the given origin, and reports whether it was cached. A
// farm calls it, with OriginPeer, when another server retired the session
// (single use, or a child replaced by a newer one).
func (c *Cache) Retire(id ID, origin Origin) bool {
	return c.retire(id, Retired, origin)
}

// Cut brings the expiry of the session id forward to until, if it is
// later, and returns the session's record as cut and whether the session is
// cached. A farm calls it when another server cut the session to its
// resumption grace, and when it writes the cut session to its store. A
// session of a chain whose revocation is still removing its sessions (see
// RemoveChain) counts as gone, as for a lookup: Cut leaves it and reports
// false.
func (c *Cache) Cut(id ID, until time.Time) (Record, bool) {
	b, h := c.bucket(&id)
	u := unixNano(until)
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.find(&id, h)
	if e == nil || c.tomb.scans.Load() != 0 && c.revoking(e, c.nowNano()) {
		return Record{}, false
	}
	if e.expires > u {
		c.restricted.Add(1)
		e.expires = u
	}
	return e.record(), true
}

// Snapshot returns an iterator over up to max live sessions of the cache
// (all of them if max is negative), newest (latest expiry) first: their IDs
// and records, as the cache held them when Snapshot was called. A farm uses
// it to write sessions back to a store that lost its data. It visits every
// bucket. Sessions of a revoked chain are left out, also those its
// revocation has yet to remove, and those revoked after Snapshot was called
// and before they are yielded.
func (c *Cache) Snapshot(max int) iter.Seq2[ID, Record] {
	now := c.nowNano()
	type entry struct {
		id ID
		r  Record
	}
	out := make([]entry, 0, c.size.Load()) // grown past it only by inserts meanwhile
	for i := range c.buckets {
		b := &c.buckets[i]
		b.mu.Lock()
		for e := b.root.next; e != &b.root; e = e.next {
			if e.expires > now && !c.revoking(e, now) {
				out = append(out, entry{e.id, e.record()})
			}
		}
		b.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b entry) int { return b.r.Expires.Compare(a.r.Expires) })
	if max >= 0 && len(out) > max {
		clear(out[max:])
		out = out[:max]
	}
	return func(yield func(ID, Record) bool) {
		for _, e := range out {
			// Revoked since it was copied: the revocation's scan
			// removes it, or has.
			if c.tomb.revoked(e.r.Chain, now) {
				continue
			}
			if !yield(e.id, e.r) {
				return
			}
		}
	}
}

// Expiries returns an iterator over the live sessions of the cache: their
// IDs and when they expire. Unlike Snapshot, it copies neither records nor
// the whole cache at once: it visits the buckets one at a time, copies a
// bucket's IDs and expiry times while holding that bucket's lock, and
// yields them after releasing it, so that the loop body may take as long
// as it likes and may call the cache. Sessions come in no particular
// order. A session inserted or removed while the iteration runs may or may
// not be yielded; one cut meanwhile may be yielded with the expiry it had
// before the cut. Sessions of a chain whose revocation has yet to remove
// them are left out, as lookups miss them. A farm uses it to check its cache
// against a store.
func (c *Cache) Expiries() iter.Seq2[ID, time.Time] {
	return func(yield func(ID, time.Time) bool) {
		type idExpiry struct {
			id      ID
			expires int64
		}
		var buf []idExpiry
		for i := range c.buckets {
			b := &c.buckets[i]
			now := c.nowNano()
			buf = buf[:0]
			b.mu.Lock()
			for e := b.root.next; e != &b.root; e = e.next {
				if e.expires > now && !c.revoking(e, now) {
					buf = append(buf, idExpiry{e.id, e.expires})
				}
			}
			b.mu.Unlock()
			for _, e := range buf {
				if !yield(e.id, time.Unix(0, e.expires)) {
					return
				}
			}
		}
	}
}

// Revoked reports whether the resumption chain chain is revoked here: a
// revocation of it (Remove, RemoveChain, RemoveChains, or one a farm
// applied) left a tombstone that has not lapsed. With no tombstone in the
// cache it costs one atomic load. A farm calls it before it writes to its
// store, or sends to its peers, a session it queued earlier and the cache
// no longer holds, so that a session of a chain revoked meanwhile does not
// reach them.
func (c *Cache) Revoked(chain uint64) bool {
	return c.tomb.revoked(chain, c.nowNano())
}

// revoking reports whether e belongs to a chain whose revocation's scan
// is under way and has not removed e yet: as a lookup (see get), what
// exports the cache's sessions to a farm (Snapshot, Expiries, Cut) takes
// such a session as gone, so that it reaches neither the farm's store
// nor a peer. With no revocation under way it costs one atomic load. The
// bucket holding e is locked.
func (c *Cache) revoking(e *entry, now int64) bool {
	return c.tomb.scans.Load() != 0 && c.tomb.revoked(e.chain, now)
}

// linkChild records child as the live child of parent (cut to end its grace
// at until) and retires an earlier child of the same parent, so that a
// parent resumed again and again within its grace yields one live child, not
// one per resumption. Of two children, the one that expires later (issued
// later) wins; it returns false if child lost (and was retired).
//
// A losing child that a handshake on this server issued is retired with
// OriginHandshake, whatever brought the winner here: this server is the
// one that retires it across the farm (and in the store), so that a newer
// child from a peer that arrives after this server's own child still leaves
// one live child farm-wide. Other losers are retired with origin: their
// issuer does the same when it hears of the winner.
//
// At most Capacity links are kept, one per parent: a link lasts its
// parent's grace, or, without a grace (ResumeGrace < 0), its child's life,
// so their number would otherwise grow with the resumptions of a Lifetime.
// Past Capacity one is forgotten: an ended one if it finds one soon, else
// an arbitrary one.
func (c *Cache) linkChild(parent, child ID, expires, until int64, origin Origin) bool {
	l := &c.life
	l.mu.Lock()
	if l.kids == nil {
		l.kids = make(map[ID]childLink)
	}
	link := childLink{child: child, expires: expires, local: origin == OriginHandshake}
	old, had := l.kids[parent]
	if !had && len(l.kids) >= c.cfg.Capacity {
		// As many links as the cache holds sessions: forget one, so
		// that links grow with the cache, not with the resumptions of
		// a link's life (a Lifetime without a grace). A link whose
		// parent's grace has ended if one is among the first
		// linkScan the map yields (links last the grace, 30 s by
		// default, but the sweep that forgets them comes every
		// SweepInterval, a minute, so a full map is mostly of those);
		// else an arbitrary one. Its parent, if resumed again, keeps its
		// earlier child, which the cache's Capacity bounds as it bounds
		// every session.
		var victim ID
		now, seen := c.nowNano(), 0
		for p, k := range l.kids {
			if k.until <= now {
				victim = p
				break
			}
			if seen == 0 {
				victim = p // if none of linkScan has ended
			}
			if seen++; seen == linkScan {
				break
			}
		}
		delete(l.kids, victim)
	}
	link.until = max(until, old.until)
	loser, loserLocal := ID{}, false
	switch {
	case !had || old.child == child:
		link.local = link.local || had && old.local
		l.kids[parent] = link
	case old.expires > expires:
		loser, loserLocal = child, link.local // a stale child arrived after a newer one
	default:
		loser, loserLocal = old.child, old.local
		l.kids[parent] = link
	}
	l.mu.Unlock()
	if loser == (ID{}) {
		return true
	}
	l.replaced.Add(1)
	if loserLocal {
		origin = OriginHandshake
	}
	c.retire(loser, Retired, origin)
	return loser != child
}

// linkScan bounds the links linkChild looks at for an ended one when the
// links are full.
const linkScan = 16

// sweepLifecycle forgets child links whose parent can no longer resume.
func (c *Cache) sweepLifecycle(now int64) {
	l := &c.life
	l.mu.Lock()
	for p, k := range l.kids {
		if k.until <= now {
			delete(l.kids, p)
		}
	}
	l.mu.Unlock()
}

// graceEnd is when a parent resumed at now stops resuming: the end of its
// grace, or, without one, the end of its child's life (a bound on it).
func (c *Cache) graceEnd(now, childExpires int64) int64 {
	if c.cfg.ResumeGrace > 0 {
		return now + int64(c.cfg.ResumeGrace)
	}
	return childExpires
}
