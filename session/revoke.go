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
// bucket, so its cost grows with the cache; revocation is rare, and
// RemoveChains revokes many chains in one visit. From the moment it records
// the revocation, no lookup (a handshake, Get, GetBuffer) finds a session
// of the chain, though its visit may not have reached that session's bucket
// yet. A revocation of a chain already revoked returns at once, with 0,
// unless another revocation of the chain is still removing its sessions:
// then it removes them too (each fires its EventRemove once, from one of
// the two), so that when it returns no session of the chain is cached.
func (c *Cache) RemoveChain(chain uint64, until time.Time, origin Origin) int {
	now := c.nowNano()
	u := c.revokedUntil(until, now)
	// Counted before the tombstone is recorded, until the scan is over:
	// meanwhile lookups check what they find against the tombstones
	// (see get), so that no session of the chain is found once the
	// tombstone is in place, whether or not the scan has reached it.
	c.tomb.scans.Add(1)
	defer c.tomb.scans.Add(-1)
	c.restricted.Add(1) // Cut and lookups may find none of the chain from here on
	if u > now {
		if !c.tomb.begin(chain, u, now) {
			// Already revoked, and no scan of it is in progress: its
			// sessions are gone and cannot come back, so a repeated
			// revocation costs no scan.
			return 0
		}
		defer c.tomb.end(chain)
	}
	return c.removeWhere(func(e *entry) bool { return e.chain == chain }, Removed, origin)
}

// RemoveChains revokes the resumption chains that revs yields, each until
// the time it is yielded with, as a call of RemoveChain for each in turn
// would: it records the same revocations and removes the same sessions,
// each of which fires EventRemove with Removed and origin. But it visits
// every bucket once for all the chains, not once for each, so its cost
// grows with the cache plus the chains, not with their product. It returns
// how many sessions it removed. It reads revs whole before it changes the
// cache, so revs may call the cache: one cache's Revocations may be passed
// to another's RemoveChains.
func (c *Cache) RemoveChains(revs iter.Seq2[uint64, time.Time], origin Origin) int {
	now := c.nowNano()
	type rev struct {
		chain uint64
		until int64
	}
	var rs []rev
	for chain, until := range revs {
		rs = append(rs, rev{chain, c.revokedUntil(until, now)})
	}
	c.tomb.scans.Add(1) // as in RemoveChain
	defer c.tomb.scans.Add(-1)
	c.restricted.Add(1)
	// Every tombstone is in place before the one scan, so that an insert
	// that the scan misses is refused (see insert). They are recorded a
	// chunk at a time, not to hold off lookups for all of them.
	// The set of chains to scan for is registered with the tombstones
	// until the scan is over, as RemoveChain marks its chain busy: it is
	// written under their lock only, so begin may read it meanwhile.
	scan := &batchScan{chains: make(map[uint64]struct{}, len(rs))}
	chains := scan.chains
	c.tomb.mu.Lock()
	c.tomb.addBatchLocked(scan)
	c.tomb.mu.Unlock()
	defer c.tomb.endBatch(scan)
	for len(rs) > 0 {
		chunk := rs[:min(len(rs), tombChunk)]
		rs = rs[len(chunk):]
		c.tomb.mu.Lock()
		for _, r := range chunk {
			if r.until > now && !c.tomb.addLocked(r.chain, r.until, now) && !c.tomb.scanningLocked(r.chain) {
				continue // already revoked, as in RemoveChain
			}
			chains[r.chain] = struct{}{}
		}
		c.tomb.mu.Unlock()
	}
	switch len(chains) {
	case 0:
		return 0
	case 1:
		for chain := range chains {
			return c.removeWhere(func(e *entry) bool { return e.chain == chain }, Removed, origin)
		}
	}
	return c.removeWhere(func(e *entry) bool {
		_, ok := chains[e.chain]
		return ok
	}, Removed, origin)
}

// tombChunk is how many revocations RemoveChains records under one hold of
// the tombstones' lock.
const tombChunk = 1024

// revokedUntil returns until, in Unix nanoseconds, bounded by how long a
// chain revoked at now could live: a peer cannot make the cache remember a
// chain for longer than that.
func (c *Cache) revokedUntil(until time.Time, now int64) int64 {
	return min(unixNano(until), now+int64(c.cfg.MaxChainLifetime))
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
	n atomic.Int32
	// scans counts the revocations in progress: from before they record
	// their tombstones until their scan has removed the chains' sessions.
	scans atomic.Int32
	mu    sync.RWMutex
	m     map[uint64]int64 // chain -> until, Unix nanoseconds
	// busy counts, for each chain, the RemoveChain calls scanning for its
	// sessions, and batches holds the sets of chains that RemoveChains
	// calls scan for: a revocation that finds a chain revoked already
	// scans too while a scan of it is under way (see begin), since that
	// scan may not have reached every bucket yet.
	busy    map[uint64]int32
	batches map[*batchScan]struct{}
}

// A batchScan is the set of chains one RemoveChains call scans for.
type batchScan struct {
	chains map[uint64]struct{} // written with tombstones.mu held
}

// begin records chain as revoked until the given time, as addLocked does, and
// reports whether the caller must scan for its sessions: the chain was not
// revoked at now, or another revocation's scan of it is in progress. (The
// caller does not wait for that scan, which would deadlock a hook that
// revokes the chain from within its events; removal is idempotent, and
// each session removed by one scan only.) If it reports true, the chain is
// marked busy until the caller's end.
func (t *tombstones) begin(chain uint64, until, now int64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.beginLocked(chain, until, now)
}

// beginLocked is begin with t.mu held.
func (t *tombstones) beginLocked(chain uint64, until, now int64) bool {
	if !t.addLocked(chain, until, now) && !t.scanningLocked(chain) {
		return false
	}
	if t.busy == nil {
		t.busy = make(map[uint64]int32)
	}
	t.busy[chain]++
	return true
}

// end notes that a scan for chain's sessions that begin allowed is over.
func (t *tombstones) end(chain uint64) {
	t.mu.Lock()
	t.endLocked(chain)
	t.mu.Unlock()
}

// scanningLocked reports whether a revocation's scan for chain's sessions
// is under way; t.mu is held.
func (t *tombstones) scanningLocked(chain uint64) bool {
	if t.busy[chain] > 0 {
		return true
	}
	for b := range t.batches {
		if _, ok := b.chains[chain]; ok {
			return true
		}
	}
	return false
}

// addBatchLocked registers the chains a RemoveChains call scans for, until
// endBatch; t.mu is held.
func (t *tombstones) addBatchLocked(b *batchScan) {
	if t.batches == nil {
		t.batches = make(map[*batchScan]struct{})
	}
	t.batches[b] = struct{}{}
}

// endBatch notes that the scan of a RemoveChains call is over.
func (t *tombstones) endBatch(b *batchScan) {
	t.mu.Lock()
	delete(t.batches, b)
	t.mu.Unlock()
}

// endLocked is end with t.mu held.
func (t *tombstones) endLocked(chain uint64) {
	if t.busy[chain]--; t.busy[chain] <= 0 {
		delete(t.busy, chain)
	}
}

// addLocked records chain as revoked until the given time, and reports
// whether the chain was not already revoked at now; t.mu is held. (A
// revocation that has lapsed but is not yet swept refuses nothing: sessions
// of its chain may have been inserted since.)
func (t *tombstones) addLocked(chain uint64, until, now int64) bool {
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
