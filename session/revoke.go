package session

import (
	"crypto/rand"
	"encoding/binary"
	"iter"
	"sync"
	"sync/atomic"
	"time"
)

// Remove revokes the session id: it removes the session and every other
// session of its resumption chain (the tickets issued by resuming it, and the
// one it was resumed from), and refuses that chain from then on, until the
// chain could no longer be resumed anyway. Each removed session fires
// EventRemove with Removed and OriginAPI. Remove returns the record id had
// and whether id was in the cache; if it was not, nothing is revoked (see
// RemoveChain).
func (c *Cache) Remove(id ID) (Record, bool) {
	b, h := c.bucket(&id)
	b.mu.Lock()
	e := b.find(&id, h)
	var r Record
	if e != nil {
		r = e.record()
	}
	b.mu.Unlock()
	if e == nil {
		return Record{}, false
	}
	c.RemoveChain(r.Chain, c.ChainEnd(r), OriginAPI)
	return r, true
}

// ChainEnd returns when the resumption chain of r stops resuming, and so
// until when a revocation of it must be remembered: r.ChainStart plus
// Config.MaxChainLifetime. A farm tells its peers to revoke the chain until
// then.
func (c *Cache) ChainEnd(r Record) time.Time {
	return r.ChainStart.Add(c.cfg.MaxChainLifetime)
}

// RemoveChain revokes a resumption chain: it removes every session of the
// chain and refuses sessions of it, from any origin, until the given time
// (when the chain's sessions would have been refused anyway, ChainStart plus
// MaxChainLifetime). It returns how many sessions it removed. It visits every
// bucket, so its cost grows with the cache; revocation is rare.
func (c *Cache) RemoveChain(chain uint64, until time.Time, origin Origin) int {
	now := c.nowNano()
	u := until.UnixNano()
	if lim := now + int64(c.cfg.MaxChainLifetime); u > lim {
		u = lim // a peer cannot make us remember a chain for longer than it could live
	}
	if u > now && !c.tomb.add(chain, u, now) {
		// Already revoked: its sessions are gone and cannot come back,
		// so a repeated revocation costs no scan.
		return 0
	}
	return c.removeWhere(func(e *entry) bool { return e.chain == chain }, Removed, origin)
}

// removeWhere removes, bucket by bucket, the sessions for which match
// reports true, and fires one EventRemove for each.
func (c *Cache) removeWhere(match func(*entry) bool, reason RemoveReason, origin Origin) int {
	n := 0
	var gone []Event
	for i := range c.buckets {
		b := &c.buckets[i]
		b.mu.Lock()
		for e := b.root.next; e != &b.root; {
			next := e.next
			if match(e) {
				c.unlink(b, e, c.hash(&e.id))
				b.stats.removed[reason]++
				n++
				if c.hooks.Load() != nil {
					gone = append(gone, Event{Kind: EventRemove, ID: e.id, Origin: origin, Reason: reason, Record: e.record()})
				}
			}
			e = next
		}
		b.mu.Unlock()
		for _, ev := range gone {
			c.fire(ev)
		}
		gone = gone[:0]
	}
	return n
}

func newChain() uint64 {
	var b [8]byte
	rand.Read(b[:])
	if v := binary.LittleEndian.Uint64(b[:]); v != 0 {
		return v
	}
	return 1
}

// Revocations returns the revoked chains the cache remembers (from Remove
// and RemoveChain, of any origin), each with when its revocation lapses;
// those that have lapsed are left out. It reads them all at once and yields
// them afterwards, so the yield may call the cache. A farm writes them back
// to a store that lost them.
func (c *Cache) Revocations() iter.Seq2[uint64, time.Time] {
	now := c.nowNano()
	type rev struct {
		chain uint64
		until int64
	}
	var revs []rev
	if c.tomb.n.Load() > 0 {
		c.tomb.mu.RLock()
		for chain, until := range c.tomb.m {
			if until > now {
				revs = append(revs, rev{chain, until})
			}
		}
		c.tomb.mu.RUnlock()
	}
	return func(yield func(uint64, time.Time) bool) {
		for _, r := range revs {
			if !yield(r.chain, time.Unix(0, r.until)) {
				return
			}
		}
	}
}

// tombstones remember revoked chains until they could no longer be resumed.
type tombstones struct {
	n  atomic.Int32
	mu sync.RWMutex
	m  map[uint64]int64 // chain -> until, Unix nanoseconds
}

// add records chain as revoked until the given time, and reports whether
// the chain was not already revoked at now. (A revocation that has lapsed
// but is not yet swept refuses nothing: sessions of its chain may have been
// inserted since.)
func (t *tombstones) add(chain uint64, until, now int64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	old, had := t.m[chain]
	if until > old {
		t.m[chain] = until
	}
	t.n.Store(int32(len(t.m)))
	return !had || old <= now
}

func (t *tombstones) revoked(chain uint64, now int64) bool {
	if t.n.Load() == 0 {
		return false
	}
	t.mu.RLock()
	until, ok := t.m[chain]
	t.mu.RUnlock()
	return ok && until > now
}

func (t *tombstones) sweep(now int64) {
	t.mu.Lock()
	for k, until := range t.m {
		if until <= now {
			delete(t.m, k)
		}
	}
	t.n.Store(int32(len(t.m)))
	t.mu.Unlock()
}
