package session

import "sync/atomic"

// Stats are the cache's counters since it was made, and its current size.
type Stats struct {
	Size    int    // sessions held now, including expired ones not yet swept
	Hits    uint64 // lookups that found a live session
	Misses  uint64 // lookups that found none (absent or expired)
	Inserts uint64 // sessions inserted or replaced

	// Removals by reason: revoked (Remove, RemoveChain), expired (found
	// expired by a lookup, the sweep, or as the eviction victim), evicted
	// (least recently used in a full bucket), retired (single-use).
	Removed, Expired, Evicted, Retired uint64

	RefusedServerName uint64 // resumptions refused: presented under another server name
	ChainExpired      uint64 // resumptions refused: the chain outlived MaxChainLifetime
	ForgedIDs         uint64 // identities that failed authentication (handshake or Insert)
	RevokedInserts    uint64 // inserts refused because their chain was revoked
	Oversized         uint64 // inserts refused because the state exceeded MaxStateLen
	ParseErrors       uint64 // cached states that tls.ParseSessionState refused
	WrapErrors        uint64 // tickets issued without storing the session (state could not be serialized, or server name over MaxServerNameLen)
	HookPanics        uint64 // hook calls that panicked

	LoaderHits   uint64 // misses answered by Config.Loader
	LoaderMisses uint64 // misses the Loader did not have either
	LoaderErrors uint64 // Loader calls that failed or timed out

	TicketsIssued   uint64 // stateless tickets issued (Stateless mode)
	TicketsAccepted uint64 // stateless tickets accepted (Stateless and Mixed modes)
	TicketsUnbound  uint64 // accepted tickets that carried no server name binding
	TicketsExpired  uint64 // stateless tickets refused: older than Lifetime

	// Single use (see Claimer) and bounded children.
	SingleUseBusy     uint64 // resumptions refused: another handshake held the session's claim
	SingleUseRefused  uint64 // resumptions refused: the farm's Claimer refused or could not answer
	SingleUseReleased uint64 // claims released: the handshake failed or did not resume
	SingleUseLate     uint64 // HandshakeComplete after the claim had been released
	ChildrenReplaced  uint64 // children retired because their parent was resumed again
	TicketsFallback   uint64 // short-lived tickets issued instead of cached sessions while the farm was unreachable
}

// counters are the cache's shared counters, for events outside a bucket lock.
type counters struct {
	refusedSNI, chainExpired, forgedIDs, revokedInserts, oversized atomic.Uint64
	parseErrors, wrapErrors, hookPanics                            atomic.Uint64
	loaderHits, loaderMisses, loaderErrors                         atomic.Uint64
	ticketsIssued, ticketsAccepted, ticketsUnbound, ticketsExpired atomic.Uint64
}

// bucketStats are counted under the bucket lock, so they cost no atomic
// operation and no shared cache line on the hot path.
type bucketStats struct {
	hits, misses, inserts uint64
	removed               [numReasons]uint64
}

// Stats returns a snapshot of the cache's counters.
func (c *Cache) Stats() Stats {
	var s Stats
	for i := range c.buckets {
		b := &c.buckets[i]
		b.mu.Lock()
		s.Size += len(b.m)
		s.Hits += b.stats.hits
		s.Misses += b.stats.misses
		s.Inserts += b.stats.inserts
		s.Removed += b.stats.removed[Removed]
		s.Expired += b.stats.removed[Expired]
		s.Evicted += b.stats.removed[Evicted]
		s.Retired += b.stats.removed[Retired]
		b.mu.Unlock()
	}
	k := &c.ctr
	s.RefusedServerName = k.refusedSNI.Load()
	s.ChainExpired = k.chainExpired.Load()
	s.ForgedIDs = k.forgedIDs.Load()
	s.RevokedInserts = k.revokedInserts.Load()
	s.Oversized = k.oversized.Load()
	s.ParseErrors = k.parseErrors.Load()
	s.WrapErrors = k.wrapErrors.Load()
	s.HookPanics = k.hookPanics.Load()
	s.LoaderHits = k.loaderHits.Load()
	s.LoaderMisses = k.loaderMisses.Load()
	s.LoaderErrors = k.loaderErrors.Load()
	s.TicketsIssued = k.ticketsIssued.Load()
	s.TicketsAccepted = k.ticketsAccepted.Load()
	s.TicketsUnbound = k.ticketsUnbound.Load()
	s.TicketsExpired = k.ticketsExpired.Load()
	l := &c.life
	s.SingleUseBusy, s.SingleUseRefused = l.busy.Load(), l.refused.Load()
	s.SingleUseReleased, s.SingleUseLate = l.released.Load(), l.late.Load()
	s.ChildrenReplaced = l.replaced.Load()
	s.TicketsFallback = l.fallbackIssued.Load()
	return s
}
