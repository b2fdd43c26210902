package session_test

import (
	"context"
	"crypto/tls"
	"sync"

	"github.com/tlsfarm/tlsfarm/metric"
	"github.com/tlsfarm/tlsfarm/session"
)

// cacheStats are the counters the tests look at, read from Cache.Metrics.
type cacheStats struct {
	Size, Hits, Misses, Inserts                               uint64
	Removed, Expired, Evicted, Retired                        uint64
	RefusedServerName, ChainExpired, ForgedIDs, Oversized     uint64
	HookPanics, WrapErrors, LoaderHits, LoaderErrors          uint64
	TicketsIssued, TicketsAccepted, TicketsFallback           uint64
	TicketsUndecryptable, TicketsForeign, TicketsRevoked      uint64
	TicketsFuture, TicketsSingleUse                           uint64
	SingleUseReleased, ChildrenReplaced, RevokedInserts, Late uint64
	Reissued                                                  uint64
}

func stats(c *session.Cache) cacheStats {
	m := c.Metrics()
	v := func(name string, labels ...string) uint64 {
		x, ok := metric.Value(m, name, labels...)
		if !ok {
			panic("no sample " + name)
		}
		return uint64(x)
	}
	const (
		lookups  = "tlsfarm_cache_lookups_total"
		removals = "tlsfarm_cache_removals_total"
		refusals = "tlsfarm_cache_refusals_total"
		tickets  = "tlsfarm_cache_tickets_total"
	)
	return cacheStats{
		Size: v("tlsfarm_cache_sessions"), Hits: v(lookups, "result", "hit"), Misses: v(lookups, "result", "miss"),
		Inserts: v("tlsfarm_cache_inserts_total"),
		Removed: v(removals, "reason", "revoked"), Expired: v(removals, "reason", "expired"),
		Evicted: v(removals, "reason", "evicted"), Retired: v(removals, "reason", "retired"),
		RefusedServerName: v(refusals, "reason", "server_name"), ChainExpired: v(refusals, "reason", "chain_expired"),
		ForgedIDs: v(refusals, "reason", "forged_id"), Oversized: v(refusals, "reason", "oversized"),
		RevokedInserts: v(refusals, "reason", "revoked_insert"), WrapErrors: v(refusals, "reason", "wrap_error"),
		HookPanics: v("tlsfarm_cache_hook_panics_total"),
		LoaderHits: v("tlsfarm_cache_loader_total", "result", "hit"), LoaderErrors: v("tlsfarm_cache_loader_total", "result", "error"),
		TicketsIssued: v(tickets, "event", "issued"), TicketsAccepted: v(tickets, "event", "accepted"),
		TicketsUndecryptable: v(tickets, "event", "undecryptable"), TicketsForeign: v(tickets, "event", "foreign"),
		TicketsRevoked:    v(tickets, "event", "revoked"),
		TicketsFuture:     v(tickets, "event", "future"),
		TicketsSingleUse:  v(tickets, "event", "single_use"),
		TicketsFallback:   v("tlsfarm_cache_fallback_tickets_total"),
		SingleUseReleased: v("tlsfarm_cache_single_use_total", "result", "released"),
		Late:              v("tlsfarm_cache_single_use_total", "result", "late"),
		ChildrenReplaced:  v("tlsfarm_cache_children_replaced_total"),
		Reissued:          v("tlsfarm_cache_reissued_total"),
	}
}

// unwrap calls the UnwrapSession that Install sets on a config used without
// its GetConfigForClient.
func unwrap(c *session.Cache, identity []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
	cfg := &tls.Config{}
	c.Install(cfg)
	return cfg.UnwrapSession(identity, cs)
}

// lookup returns the record of the session id as the cache holds it, after
// asking for it as GetBuffer does.
func lookup(c *session.Cache, id session.ID) (session.Record, bool) {
	if _, ok := c.GetBuffer(id, nil); !ok {
		return session.Record{}, false
	}
	for got, r := range c.Snapshot(-1) {
		if got == id {
			return r, true
		}
	}
	return session.Record{}, false
}

// loadFunc is a Farm that only loads: claims are granted, releases ignored.
type loadFunc func(ctx context.Context, id session.ID) (*session.Record, error)

func (f loadFunc) Load(ctx context.Context, id session.ID) (*session.Record, error) {
	return f(ctx, id)
}

func (loadFunc) Claim(context.Context, session.ID) (bool, error) { return true, nil }
func (loadFunc) Release(session.ID, session.Record)              {}

// loadsFrom returns a Farm that loads sessions from src's cache, as a farm's
// store would hold them, and a count of its Load calls.
func loadsFrom(src *session.Cache) (loadFunc, func() int) {
	var mu sync.Mutex
	loads := 0
	return func(_ context.Context, id session.ID) (*session.Record, error) {
			mu.Lock()
			loads++
			mu.Unlock()
			r, ok := lookup(src, id)
			if !ok {
				return nil, nil
			}
			return &r, nil
		}, func() int {
			mu.Lock()
			defer mu.Unlock()
			return loads
		}
}
