package session

import (
	"sync/atomic"

	"github.com/tlsfarm/tlsfarm/metric"
)

// counters are the cache's shared counters, for events outside a bucket lock.
type counters struct {
	refusedSNI, chainExpired, forgedIDs, revokedInserts, oversized atomic.Uint64
	parseErrors, wrapErrors, hookPanics                            atomic.Uint64
	reissued                                                       atomic.Uint64

	// lifeClamped counts inserted records whose expiry lay beyond their
	// ID's issue time plus Lifetime, and was cut to it.
	lifeClamped                                                    atomic.Uint64
	loaderHits, loaderMisses, loaderErrors                         atomic.Uint64
	ticketsIssued, ticketsAccepted, ticketsUnbound, ticketsExpired atomic.Uint64

	// Stateless tickets refused: undecryptable (not under the config's
	// ticket keys, or not a ticket at all), foreign (no binding, offered
	// to a Stateful cache), revoked (their chain was revoked), future
	// (issued, or their chain begun, more than MaxClockSkew ahead of now),
	// single use (offered to a SingleUse cache, which cannot retire one).
	ticketsUndecryptable, ticketsForeign, ticketsRevoked, ticketsFuture atomic.Uint64
	ticketsSingleUse                                                    atomic.Uint64

	// Carried tickets (see SetCarry): issued; and, presented for an ID
	// the cache did not hold, admitted (resumed from the copy), refused
	// (by the farm, or over), unopenable (not under the ticket keys, or
	// not bound to the ID).
	carriedIssued, carriedAdmitted, carriedRefused, carriedUnopenable atomic.Uint64

	// hitsHeldBack counts the sessions a handshake found in the cache
	// that the farm did not let resume (see HitChecker).
	hitsHeldBack atomic.Uint64

	// reportedHits is the most hits Metrics has reported: a lookup
	// counts as a hit in its bucket when it finds the session and moves
	// to the misses if the session turns out unusable (see Cache.got),
	// so the buckets' hits may go back by the lookups between the two; a
	// counter must not.
	reportedHits atomic.Uint64
}

// bucketStats are counted under the bucket lock, so they cost no atomic
// operation and no shared cache line on the hot path.
type bucketStats struct {
	hits, misses, inserts uint64
	removed               [numReasons]uint64
}

// Metrics returns the cache's counters since it was made, and its current
// size, as samples named tlsfarm_cache_*, the way the admin API exports
// them. Reading them visits every bucket.
func (c *Cache) Metrics() []metric.Sample {
	var size int
	var b bucketStats
	for i := range c.buckets {
		bk := &c.buckets[i]
		bk.mu.Lock()
		size += len(bk.m) + len(bk.more)
		b.hits += bk.stats.hits
		b.misses += bk.stats.misses
		b.inserts += bk.stats.inserts
		for r := range b.removed {
			b.removed[r] += bk.stats.removed[r]
		}
		bk.mu.Unlock()
	}
	k, l := &c.ctr, &c.life
	var s samples
	s.add("tlsfarm_cache_sessions", "Sessions in the cache, including expired ones not yet swept.", metric.Gauge, "", nil, uint64(size))
	s.add("tlsfarm_cache_lookups_total", "Cache lookups, by result.", metric.Counter, "result",
		[]string{"hit", "miss"}, c.ctr.reportHits(b.hits), b.misses)
	s.add("tlsfarm_cache_inserts_total", "Sessions inserted or replaced.", metric.Counter, "", nil, b.inserts)
	s.add("tlsfarm_cache_removals_total", "Sessions that left the cache, by reason.", metric.Counter, "reason",
		[]string{"revoked", "expired", "evicted", "retired"},
		b.removed[Removed], b.removed[Expired], b.removed[Evicted], b.removed[Retired])
	s.add("tlsfarm_cache_refusals_total", "Resumptions and inserts refused, by reason.", metric.Counter, "reason",
		[]string{"server_name", "chain_expired", "forged_id", "revoked_insert", "oversized", "parse_error", "wrap_error"},
		k.refusedSNI.Load(), k.chainExpired.Load(), k.forgedIDs.Load(), k.revokedInserts.Load(),
		k.oversized.Load(), k.parseErrors.Load(), k.wrapErrors.Load())
	s.add("tlsfarm_cache_inserts_clamped_total", "Sessions inserted (from peers or the store) whose record outlived the issue time its ID carries plus Lifetime: their expiry was cut to it.",
		metric.Counter, "", nil, k.lifeClamped.Load())
	s.add("tlsfarm_cache_hook_panics_total", "Cache hook calls that panicked.", metric.Counter, "", nil, k.hookPanics.Load())
	s.add("tlsfarm_cache_loader_total", "Misses passed to the farm's store, by result.", metric.Counter, "result",
		[]string{"hit", "miss", "error"}, k.loaderHits.Load(), k.loaderMisses.Load(), k.loaderErrors.Load())
	s.add("tlsfarm_cache_tickets_total", "Stateless tickets, by event.", metric.Counter, "event",
		[]string{"issued", "accepted", "unbound", "expired", "undecryptable", "foreign", "revoked", "future", "single_use"},
		k.ticketsIssued.Load(), k.ticketsAccepted.Load(), k.ticketsUnbound.Load(), k.ticketsExpired.Load(),
		k.ticketsUndecryptable.Load(), k.ticketsForeign.Load(), k.ticketsRevoked.Load(), k.ticketsFuture.Load(),
		k.ticketsSingleUse.Load())
	s.add("tlsfarm_cache_carried_total", "Carried tickets (the session sealed after its ID): issued, and, presented for a session the cache did not hold, admitted, refused or unopenable.",
		metric.Counter, "result", []string{"issued", "admitted", "refused", "unopenable"},
		k.carriedIssued.Load(), k.carriedAdmitted.Load(), k.carriedRefused.Load(), k.carriedUnopenable.Load())
	s.add("tlsfarm_cache_hits_held_back_total", "Sessions a handshake found in the cache that the farm held back from resuming (its messages lagged and it could not confirm them: see HitChecker); each is also counted as a miss.",
		metric.Counter, "", nil, k.hitsHeldBack.Load())
	s.add("tlsfarm_cache_reissued_total", "TLS 1.2 resumptions given a fresh ticket for the session they resumed instead of a successor (see Config.ResumeGrace).",
		metric.Counter, "", nil, k.reissued.Load())
	s.add("tlsfarm_cache_fallback_tickets_total", "Short-lived stateless tickets issued instead of cached sessions while the farm was unreachable.",
		metric.Counter, "", nil, l.fallbackIssued.Load())
	s.add("tlsfarm_cache_single_use_total", "Single-use claims that did not end in a resumption, by what happened: busy (another handshake held the claim), refused (the farm's Claim refused or did not answer), released (the handshake failed or did not resume), late (the handshake was reported complete after its claim had been released).",
		metric.Counter, "result", []string{"busy", "refused", "released", "late"},
		l.busy.Load(), l.refused.Load(), l.released.Load(), l.late.Load())
	s.add("tlsfarm_cache_children_replaced_total", "Sessions retired because their parent was resumed again within its grace.",
		metric.Counter, "", nil, l.replaced.Load())
	return s
}

// samples builds a sample list: one metric with no label, or one sample per
// value of its one label.
type samples []metric.Sample

func (s *samples) add(name, help string, kind metric.Kind, label string, values []string, v ...uint64) {
	if label == "" {
		*s = append(*s, metric.Sample{Name: name, Help: help, Kind: kind, Value: float64(v[0])})
		return
	}
	for i, lv := range values {
		*s = append(*s, metric.Sample{Name: name, Help: help, Kind: kind,
			Labels: []metric.Label{{Name: label, Value: lv}}, Value: float64(v[i])})
	}
}

// reportHits returns hits, the buckets' count of hits now, or the most
// reported before if that is more (see reportedHits).
func (k *counters) reportHits(hits uint64) uint64 {
	for {
		last := k.reportedHits.Load()
		if hits <= last {
			return last
		}
		if k.reportedHits.CompareAndSwap(last, hits) {
			return hits
		}
	}
}
