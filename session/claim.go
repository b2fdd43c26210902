package session

import (
	"context"
	"crypto/tls"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// claimSettle is how long after a handshake has ended (its context is done)
// a single-use claim waits for HandshakeComplete before it is released as
// the claim of a failed handshake. A server calls HandshakeComplete right
// after Handshake returns, so this only needs to cover scheduling delays.
const claimSettle = 2 * time.Second

// A Claimer makes single use hold beyond one cache: a farm installs one (see
// SetClaimer) so that a session held by several servers, or in a shared
// store, resumes once in the whole farm.
//
// The rule (see docs/farm.md): a single-use session is claimed when a
// handshake's UnwrapSession finds it, before the handshake may resume it.
// The claim is taken first in this cache (so that concurrent handshakes on
// this server cannot both resume it) and then from the Claimer. A claim that
// either refuses, or that fails, means a full handshake. When the handshake
// completes having resumed the session, the session is retired
// (EventRemove with Retired and OriginHandshake); when it fails, or
// completes without resuming it, the claim is released, locally and with
// Release, so that whoever failed the handshake cannot burn the session.
type Claimer interface {
	// Claim takes the session id for one handshake and reports whether it
	// did. Of all the concurrent claims of one session, on every cache
	// that shares the Claimer, at most one may succeed until the session
	// is released. ctx bounds the call (Config.LoaderTimeout).
	Claim(ctx context.Context, id ID) (bool, error)

	// Release gives back a claim whose handshake did not resume the
	// session; r is the session's record as the cache holds it. It must
	// not block: it is called from the cache's goroutines.
	Release(id ID, r Record)
}

// lifecycle is the cache's state for single use and bounded children.
type lifecycle struct {
	claimer atomic.Pointer[claimerBox]

	mu     sync.Mutex
	claims map[ID]*claim    // single-use sessions held by a handshake in progress
	kids   map[ID]childLink // parent -> its live child, while the parent is in its grace

	busy, refused, released, late, replaced atomic.Uint64

	fallback       atomic.Int64 // fallback ticket lifetime; 0: off
	acceptTickets  atomic.Bool  // a Stateful cache accepts the farm's tickets
	fallbackIssued atomic.Uint64
}

// SetTicketFallback makes a Stateful or Mixed cache issue, until it is
// called again with 0, stateless tickets under the handshake config's
// session ticket keys that expire after lifetime, instead of cached
// sessions. A farm node turns it on while it cannot reach the farm, so
// that clients keep resuming on every node (whose caches accept such
// tickets, see AcceptTickets) instead of on this one only. It does nothing
// for a SingleUse cache: a ticket cannot be retired, and an unreachable
// farm must mean a full handshake, never a replayable ticket. Per-session
// revocation does not reach these tickets before they expire (a revoked
// chain still does, on nodes that know of the revocation).
func (c *Cache) SetTicketFallback(lifetime time.Duration) {
	if c.cfg.SingleUse || c.cfg.Mode == Stateless {
		return
	}
	c.life.fallback.Store(int64(max(lifetime, 0)))
}

// TicketFallback reports whether the cache issues fallback tickets now.
func (c *Cache) TicketFallback() bool { return c.life.fallback.Load() > 0 }

// AcceptTickets makes a Stateful cache accept the stateless tickets this
// farm issues (bound to a server name and a chain by this package, and
// encrypted under the handshake config's ticket keys), as a Mixed cache
// does; tickets from other issuers stay refused. A farm node whose ticket
// keys are farm-wide turns it on, so that fallback tickets resume on every
// node.
func (c *Cache) AcceptTickets(on bool) { c.life.acceptTickets.Store(on) }

func (c *Cache) fallbackLifetime() time.Duration {
	if c.cfg.SingleUse {
		return 0
	}
	return time.Duration(c.life.fallback.Load())
}

type claimerBox struct {
	c       Claimer
	timeout time.Duration
}

type childLink struct {
	child   ID
	expires int64 // the child's expiry: the newer child wins
	until   int64 // forget the link after this (the parent is gone by then)
	local   bool  // child was issued by a handshake on this server
}

// A claim is one handshake's hold on a single-use session.
type claim struct {
	c     *Cache
	id    ID
	rec   Record
	farm  bool // taken from the Claimer too
	state atomic.Int32
	at    int64
}

const (
	claimHeld int32 = iota
	claimConsumed
	claimReleased
)

// SetClaimer installs (or, with nil, removes) the Claimer that single-use
// claims are taken from after this cache's own; each Claim is bounded by
// timeout (0 means Config.LoaderTimeout). A farm node installs one.
func (c *Cache) SetClaimer(cl Claimer, timeout time.Duration) {
	if cl == nil {
		c.life.claimer.Store(nil)
		return
	}
	if timeout <= 0 {
		timeout = c.cfg.LoaderTimeout
	}
	c.life.claimer.Store(&claimerBox{c: cl, timeout: timeout})
}

// SingleUse reports whether the cache retires sessions once resumed
// (Config.SingleUse).
func (c *Cache) SingleUse() bool { return c.cfg.SingleUse }

// ResumeGrace returns the cache's Config.ResumeGrace after defaults; a
// negative value means resumed sessions keep their lifetime.
func (c *Cache) ResumeGrace() time.Duration { return c.cfg.ResumeGrace }

// Retire removes the single session id (not its chain), firing EventRemove
// with Retired and the given origin, and reports whether it was cached. A
// farm calls it, with OriginPeer, when another server retired the session
// (single use, or a child replaced by a newer one).
func (c *Cache) Retire(id ID, origin Origin) bool {
	return c.retire(id, Retired, origin)
}

// Cut brings the expiry of the session id forward to until, if it is
// later, and reports whether the session is cached. A farm calls it when
// another server cut the session to its resumption grace.
func (c *Cache) Cut(id ID, until time.Time) bool {
	b := c.bucket(&id)
	u := until.UnixNano()
	b.mu.Lock()
	e := b.m[id]
	if e != nil && e.expires > u {
		e.expires = u
	}
	b.mu.Unlock()
	return e != nil
}

// Snapshot returns up to max live sessions of the cache, newest (latest
// expiry) first, each with its ID. A farm uses it to write sessions back to a
// store that lost its data. It visits every bucket.
func (c *Cache) Snapshot(max int) []Entry {
	now := c.nowNano()
	var out []Entry
	for i := range c.buckets {
		b := &c.buckets[i]
		b.mu.Lock()
		for e := b.root.next; e != &b.root; e = e.next {
			if e.expires > now {
				out = append(out, Entry{ID: e.id, Record: e.record()})
			}
		}
		b.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b Entry) int { return b.Record.Expires.Compare(a.Record.Expires) })
	if max >= 0 && len(out) > max {
		clear(out[max:])
		out = out[:max]
	}
	return out
}

// An Entry is a session and its ID, as returned by Snapshot.
type Entry struct {
	ID     ID
	Record Record
}

// claimLocal takes the local claim on id for one handshake, and reports
// whether it did: false if another handshake holds it.
func (c *Cache) claimLocal(cl *claim) bool {
	l := &c.life
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.claims == nil {
		l.claims = make(map[ID]*claim)
	}
	if _, held := l.claims[cl.id]; held {
		return false
	}
	l.claims[cl.id] = cl
	return true
}

func (c *Cache) unclaimLocal(cl *claim) {
	l := &c.life
	l.mu.Lock()
	if l.claims[cl.id] == cl {
		delete(l.claims, cl.id)
	}
	l.mu.Unlock()
}

// takeClaim claims the single-use session id (with record rec) for one
// handshake: locally, then from the Claimer, if any. It returns nil if the
// session must not be resumed.
func (c *Cache) takeClaim(ctx context.Context, id ID, rec Record) *claim {
	cl := &claim{c: c, id: id, rec: rec, at: c.nowNano()}
	if !c.claimLocal(cl) {
		c.life.busy.Add(1)
		return nil
	}
	if box := c.life.claimer.Load(); box != nil {
		if ctx == nil {
			ctx = context.Background()
		}
		ctx, cancel := context.WithTimeout(ctx, box.timeout)
		ok, err := box.c.Claim(ctx, id)
		cancel()
		if err != nil || !ok {
			// Taken elsewhere, already consumed, or the farm cannot say:
			// a full handshake is the safe answer.
			c.unclaimLocal(cl)
			c.life.refused.Add(1)
			return nil
		}
		cl.farm = true
	}
	return cl
}

// consume settles a claim whose handshake completed having resumed the
// session: the session is retired, which a farm's hook spreads.
func (cl *claim) consume() {
	c := cl.c
	if !cl.state.CompareAndSwap(claimHeld, claimConsumed) {
		// Released already (HandshakeComplete came very late): the
		// session was resumable again meanwhile. Retire it now, and count
		// the doubt.
		c.life.late.Add(1)
	}
	c.unclaimLocal(cl)
	if !c.retire(cl.id, Retired, OriginHandshake) {
		// Not cached (a revocation or sweep removed it): the farm must
		// still hear that it is consumed.
		c.fire(Event{Kind: EventRemove, ID: cl.id, Origin: OriginHandshake, Reason: Retired, Record: cl.rec})
	}
}

// release gives a claim back: the handshake failed, or did not resume.
func (cl *claim) release() {
	if !cl.state.CompareAndSwap(claimHeld, claimReleased) {
		return
	}
	c := cl.c
	c.unclaimLocal(cl)
	c.life.released.Add(1)
	if cl.farm {
		if box := c.life.claimer.Load(); box != nil {
			box.c.Release(cl.id, cl.rec)
		}
	}
}

// watch arranges for the claim to be settled: by HandshakeComplete on conn,
// or released claimSettle after the handshake's context ends without it.
func (h *handshake) watch(cl *claim) {
	c := h.c
	if h.conn != nil {
		c.pending.Store(h.conn, cl)
	}
	settle := func() {
		time.AfterFunc(claimSettle, func() {
			if h.conn != nil && !c.pending.CompareAndDelete(h.conn, cl) {
				return // settled by HandshakeComplete
			}
			cl.release()
		})
	}
	if h.ctx == nil || h.ctx.Done() == nil {
		time.AfterFunc(pendingTTL, cl.release)
		return
	}
	context.AfterFunc(h.ctx, settle)
}

// settleClaim settles the claim, if any, of the handshake of conn.
func (c *Cache) settleClaim(conn *tls.Conn) {
	v, ok := c.pending.LoadAndDelete(conn.NetConn())
	if !ok {
		return
	}
	cl := v.(*claim)
	if conn.ConnectionState().DidResume {
		cl.consume()
	} else {
		cl.release() // the handshake found the session but did not resume it
	}
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
func (c *Cache) linkChild(parent, child ID, expires, until int64, origin Origin) bool {
	l := &c.life
	l.mu.Lock()
	if l.kids == nil {
		l.kids = make(map[ID]childLink)
	}
	link := childLink{child: child, expires: expires, local: origin == OriginHandshake}
	old, had := l.kids[parent]
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
