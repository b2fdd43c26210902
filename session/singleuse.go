package session

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"reflect"
	"sync/atomic"
	"syscall"
	"time"
)

// pendingTTL is how long a single-use claim waits for HandshakeComplete.
// Then the wait is forgotten (the pending entry goes, so memory stays
// bounded) and the claim is settled without the report (see expire):
// consumed if the handshake got as far as resuming the session
// (VerifyConnection saw it) and its connection is not known to be closed,
// released otherwise. A used session is never put back for a report that
// is late or never comes: that client at worst pays a full handshake next
// time.
const pendingTTL = 2 * time.Minute

// HandshakeComplete tells a SingleUse cache that the handshake of conn
// completed (conn.Handshake returned nil). If the handshake resumed a
// single-use session, the session is retired now (on every server of a
// farm); if it did not, the claim the handshake took on the session is
// released. It is cheap and does nothing for caches that are not SingleUse,
// so servers may always call it, more than once too. With net/http, call
// it from Server.ConnState on StateActive and StateClosed. A handshake that
// fails needs no call.
//
// Single use holds without it. crypto/tls calls no server callback after
// the client's Finished message, so the config Install makes notes, in its
// VerifyConnection, that a handshake is resuming a claimed session (in TLS
// 1.3 the client has proved it holds the session's secret by then), and
// when the handshake ends the session is retired. What the call adds is
// precision: once a server has called it, the cache waits for the call, so
// that a handshake that fails after VerifyConnection (a client that aborts,
// whose connection the server closes) releases its claim instead of
// burning the session. A handshake that resumed, on a connection still
// open, keeps its claim until the call, up to two minutes (pendingTTL);
// without the call by then, the session is retired as used, unless the
// connection is known to be closed (then released, as a failed
// handshake's). A report that late does nothing more: the session is never
// put back, so it never resumes a second time. So report a connection that
// closes without having become active too (StateClosed), or its session
// stays claimed that long.
func (c *Cache) HandshakeComplete(conn *tls.Conn) {
	if !c.cfg.SingleUse {
		return
	}
	c.reported.Store(true)
	c.settleClaim(conn)
}

// sweepPending settles, and forgets, the claims that have waited for
// HandshakeComplete longer than pendingTTL.
func (c *Cache) sweepPending(now int64) {
	ttl := int64(c.cfg.pendingTTL)
	c.pending.Range(func(k, v any) bool {
		if cl := v.(*claim); now-cl.at > ttl && c.pending.CompareAndDelete(k, cl) {
			cl.expire(k.(net.Conn))
		}
		return true
	})
}

// claimSettle is how long after a handshake has ended (its context is done)
// a single-use claim waits for HandshakeComplete before it is settled
// without it: released as the claim of a failed handshake, or, on a server
// that does not call HandshakeComplete, consumed if the handshake resumed.
// A server calls HandshakeComplete right after Handshake returns, so this
// only needs to cover scheduling delays.
const claimSettle = 2 * time.Second

// A claim is one handshake's hold on a single-use session.
type claim struct {
	c     *Cache
	id    ID
	rec   Record
	farm  bool // taken from the Farm too
	state atomic.Int32
	at    int64
}

const (
	claimHeld int32 = iota
	// claimResumed: held by a handshake that resumed the session (its
	// VerifyConnection saw it, see resume).
	claimResumed
	claimConsumed
	claimReleased
)

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
// handshake: locally, then from the Farm the cache joined, if any. It
// returns nil if the session must not be resumed.
func (c *Cache) takeClaim(ctx context.Context, id ID, rec Record) *claim {
	cl := &claim{c: c, id: id, rec: rec, at: c.nowNano()}
	if !c.claimLocal(cl) {
		c.life.busy.Add(1)
		return nil
	}
	if !c.holds(id) {
		// Consumed (or removed) since the handshake found it: consume
		// retires the session before it lets go of its claim.
		c.unclaimLocal(cl)
		c.life.busy.Add(1)
		return nil
	}
	if box := c.farm.Load(); box != nil {
		if ctx == nil {
			ctx = context.Background()
		}
		ok, err := box.f.Claim(ctx, id)
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
	if !cl.state.CompareAndSwap(claimResumed, claimConsumed) && !cl.state.CompareAndSwap(claimHeld, claimConsumed) {
		// Released already: the session was resumable again meanwhile.
		// Retire it now, and count the doubt.
		c.life.late.Add(1)
	}
	// Retired before the claim goes: a handshake that found the session
	// before and claims it after must find it gone (see takeClaim).
	if !c.retire(cl.id, Retired, OriginHandshake) {
		// Not cached (a revocation or sweep removed it): the farm must
		// still hear that it is consumed.
		c.fire(Event{Kind: EventRemove, ID: cl.id, Origin: OriginHandshake, Reason: Retired, Record: cl.rec})
	}
	c.unclaimLocal(cl)
}

// holds reports whether the session id is in the cache, expired or not.
func (c *Cache) holds(id ID) bool {
	b, h := c.bucket(&id)
	b.mu.Lock()
	e := b.find(&id, h)
	b.mu.Unlock()
	return e != nil
}

// release gives a claim back: the handshake failed, or did not resume.
func (cl *claim) release() {
	if cl.state.CompareAndSwap(claimHeld, claimReleased) || cl.state.CompareAndSwap(claimResumed, claimReleased) {
		cl.giveBack()
	}
}

// errClaimExpired fails a handshake that comes to resume a single-use
// session after its claim ran out (see claim.resume).
var errClaimExpired = errors.New("session: single-use claim expired before the handshake resumed the session")

// resume notes, in VerifyConnection, that the handshake holding cl resumes
// its session. It reports false if the claim was released meanwhile
// (pendingTTL ran out first, see expire): the session may be resumed
// elsewhere by now, so this handshake must fail.
func (cl *claim) resume() bool {
	return cl.state.CompareAndSwap(claimHeld, claimResumed) || cl.state.Load() == claimResumed
}

// expire settles a claim still waiting for HandshakeComplete pendingTTL
// after it was taken, on conn (whose pending entry the caller removed). A
// handshake that has not resumed the session is released, atomically
// with respect to its VerifyConnection, which then fails it (see resume).
// One that resumed is consumed: its report is late or will never come,
// and released, the session, used, would resume again. Only if its
// connection is known to be closed is it released, as a handshake that
// failed after VerifyConnection (a report of a completed handshake, by a
// server that reports, would have come before its connection closed).
func (cl *claim) expire(conn net.Conn) {
	if cl.state.CompareAndSwap(claimHeld, claimReleased) {
		cl.giveBack()
		return
	}
	if cl.state.Load() != claimResumed {
		return // settled already
	}
	if connClosed(conn) {
		cl.release()
		return
	}
	cl.consume()
}

// giveBack puts back the session of a claim just released.
func (cl *claim) giveBack() {
	c := cl.c
	c.unclaimLocal(cl)
	c.life.released.Add(1)
	if cl.farm {
		if box := c.farm.Load(); box != nil {
			box.f.Release(cl.id, cl.rec)
		}
	}
}

// watch arranges for the claim to be settled: by HandshakeComplete on conn,
// or claimSettle after the handshake's context ends without it, or, for a
// claim that still waits then (or has no context to wait for), pendingTTL
// after it was taken (see expire).
//
// The wait for HandshakeComplete is keyed by the connection, so only a
// connection that is a pointer (see keyable) has one. The claim of a
// handshake on another connection is settled as soon as the handshake
// ends, as on a server that does not call HandshakeComplete: consumed if
// the handshake got as far as resuming the session, released otherwise.
// unwrap takes no claim for such a connection without a handshake context.
func (h *handshake) watch(cl *claim) {
	c := h.c
	keyed := keyable(h.conn)
	if keyed {
		c.pending.Store(h.conn, cl)
	}
	settle := func() {
		resumed := cl.state.Load() == claimResumed
		if keyed && resumed && c.reported.Load() && !connClosed(h.conn) {
			// The server reports, and has not reported this handshake,
			// which got as far as resuming the session, yet keeps its
			// connection: the handshake completed and its report is
			// late (a loaded server, or net/http's StateActive, which
			// comes with the client's first request). Released, the
			// session, used, would resume again: the claim waits for
			// the report, or for sweepPending, which consumes it
			// (releases it if its connection has closed by then, see
			// expire). A server closes the connection of a handshake
			// that failed.
			return
		}
		if keyed && !c.pending.CompareAndDelete(h.conn, cl) {
			return // settled by HandshakeComplete, or by sweepPending
		}
		if resumed && (!keyed || !c.reported.Load()) {
			// HandshakeComplete does not come for this handshake: it got
			// as far as resuming the session, so it is used.
			cl.consume()
			return
		}
		cl.release()
	}
	if h.ctx == nil || h.ctx.Done() == nil {
		// Keyed (unwrap takes no claim otherwise): HandshakeComplete, or
		// pendingTTL (or sweepPending, whichever comes first).
		conn := h.conn
		time.AfterFunc(c.cfg.pendingTTL, func() {
			if c.pending.CompareAndDelete(conn, cl) {
				cl.expire(conn)
			}
		})
		return
	}
	if !keyed {
		context.AfterFunc(h.ctx, settle)
		return
	}
	context.AfterFunc(h.ctx, func() { time.AfterFunc(claimSettle, settle) })
}

// connClosed reports whether conn is known to be closed: false for an
// open connection, and for one that cannot tell (not a syscall.Conn).
func connClosed(conn net.Conn) bool {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	return rc.Control(func(uintptr) {}) != nil
}

// keyable reports whether the single-use claim of a handshake on conn can
// wait for HandshakeComplete, keyed by conn: whether conn is a pointer. A
// connection of another kind may not be usable as a map key (a struct
// holding a slice, or an interface that does), which would panic.
func keyable(conn net.Conn) bool {
	return conn != nil && reflect.TypeOf(conn).Kind() == reflect.Pointer
}

// settleClaim settles the claim, if any, of the handshake of conn.
func (c *Cache) settleClaim(conn *tls.Conn) {
	nc := conn.NetConn()
	if !keyable(nc) {
		return // its claim is settled when its handshake ends (see watch)
	}
	v, ok := c.pending.LoadAndDelete(nc)
	if !ok {
		return
	}
	cl := v.(*claim)
	if cs := conn.ConnectionState(); cs.HandshakeComplete && cs.DidResume {
		cl.consume()
	} else {
		cl.release() // the handshake found the session but did not resume it
	}
}
