package farm

import (
	"context"
	"encoding/hex"
	"errors"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/session"
)

// lookupCounters say why handshakes stopped waiting for the store, and how
// long the store took to answer.
type lookupCounters struct {
	deadline atomic.Uint64 // the handshake's LookupTimeout passed first
	canceled atomic.Uint64 // the handshake went away first
	late     atomic.Uint64 // the store answered, after LookupTimeout
	latency  histogram     // every answer of the store, in time or late
	waiting  atomic.Int64  // handshakes waiting for a store answer now (for the tests)

	youngWait histogram // how long handshakes waited for a young session they got (see young.go)
}

// lookupStore reads id from the store once for all the handshakes that want
// it at the same time, and waits for the answer until ctx ends. The read
// itself is not bound to ctx but to OpTimeout, so that a store that answers
// after the lookup deadline is seen answering: such an answer is counted as
// late and its latency recorded, which is what the deadline should be
// chosen from. A handshake that stops waiting is counted by why: its
// deadline passed, or it went away. A value the store holds for id that
// does not open is errStoreRejected.
func (n *Node) lookupStore(ctx context.Context, id session.ID) (*session.Record, error) {
	return n.lookupStoreAs(ctx, id, 0)
}

// lookupStoreAs is lookupStore, but hedge > 0 makes it a read of its own,
// not shared with a read of id already under way (which may be the one
// stuck): a young wait's re-read alongside a slow read (see loadYoung).
// Every lookup reads the store's primary (see fetchRecord), so a read for
// a revocation's wait (see revokeUnheld) may share a handshake's.
func (n *Node) lookupStoreAs(ctx context.Context, id session.ID, hedge int) (*session.Record, error) {
	start := time.Now()
	key := string(id[:])
	if hedge > 0 {
		key += "/" + strconv.Itoa(hedge)
	}
	// Whether id is young is decided as the read is asked for: a read
	// that ends after the ID grew old may still have missed a write that
	// was on its way. (The read's goroutine may start later.)
	young := n.neg != nil && n.isYoung(id)
	ch := n.sf.DoChan(key, func() (any, error) {
		if hedge == 0 && !young && n.neg != nil && n.neg.has(id, n.cfg.Now()) {
			// A read that ended after this lookup's caller asked the
			// negative cache (see loadFarm), and before this read
			// began, found id missing: not read again. (Seen in CI: a
			// dead ID presented by four clients at once cost two GETs.)
			n.ctr.negativeHits.Add(1)
			return nil, nil
		}
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), n.cfg.OpTimeout)
		defer cancel()
		rec, rejected, err := n.fetchRecord(fctx, id)
		took := time.Since(start)
		if err == nil && rec == nil && n.neg != nil && !young {
			// A young session may be on its way: never remembered missing.
			n.neg.add(id, n.cfg.Now())
		}
		if err == nil {
			n.lk.latency.observe(took)
		}
		switch {
		case took <= n.cfg.LookupTimeout:
			n.brk.record(err == nil, n.cfg.Now())
		case err == nil:
			// The handshakes that waited have counted a failure already;
			// but the store works, if slowly: its slowness alone must not
			// open the breaker, which would stop every lookup (and every
			// write-through wait) for BreakerCooldown. LookupLate and
			// LookupLatency tell the operator to move the deadline.
			n.lk.late.Add(1)
			n.brk.record(true, n.cfg.Now())
		}
		if rejected {
			return nil, errStoreRejected
		}
		return rec, err
	})
	n.lk.waiting.Add(1)
	defer n.lk.waiting.Add(-1)
	select {
	case r := <-ch:
		rec, _ := r.Val.(*session.Record)
		if r.Err == errStoreRejected {
			return nil, errStoreRejected
		}
		return rec, r.Err
	case <-ctx.Done():
		switch {
		case hedge > 0:
			// Not a handshake giving up: its wait's first read counts that.
		case errors.Is(ctx.Err(), context.DeadlineExceeded):
			n.lk.deadline.Add(1)
			// A store slower than the deadline fails handshakes as one that
			// is down does: let the breaker count it now, not when (if) the
			// answer comes.
			n.brk.record(false, n.cfg.Now())
		default:
			n.lk.canceled.Add(1)
		}
		return nil, ctx.Err()
	}
}

// Store keys, relative to the farm's scope: the session records (in
// Records) and the tombstone set (in Coord).
const (
	sessionKeyPrefix = "s:"
	tombstoneKey     = "revoked"
)

func sessionKey(id session.ID) string {
	var b [len(sessionKeyPrefix) + 2*session.IDLen]byte
	copy(b[:], sessionKeyPrefix)
	hex.Encode(b[len(sessionKeyPrefix):], id[:])
	return string(b[:])
}

// load is the cache's loader: a store lookup, one at a time per ID. Until
// the node has read the farm's revocations, it finds nothing. While
// the store is failing (the breaker is open), it does not try: a handshake should not pay the lookup deadline to learn what the
// last ones learned. Nor does it for an ID the store did not have a moment
// ago (the negative cache). A young ID (one whose session may still be on
// its way, in write-through mode) is waited for instead: see loadYoung.
//
// Concurrent handshakes presenting one ID share one lookup, which runs
// under a context of its own (OpTimeout, detached from any one client; see
// lookupStore): each handshake gives up on its own ctx (the lookup
// deadline), and one client hanging up does not fail the others.
func (n *Node) load(ctx context.Context, id session.ID) (rec *session.Record, stored bool, err error) {
	rec, stored, err = n.loadFarm(ctx, id)
	if n.refuseRevokedID(id, rec) {
		return nil, false, nil // revoked by ID: its chain is revoked now
	}
	return rec, stored, err
}

// loadFarm is load before the check of the revocations by ID. stored
// says the record is the store's, read by this lookup (not a peer's copy,
// nor one a young wait got, from the bus or the store): the hit gate
// need not read it again (see gateLoaded).
func (n *Node) loadFarm(ctx context.Context, id session.ID) (*session.Record, bool, error) {
	if !n.revsKnown.Load() {
		// The farm may have revoked it: a full handshake (see Join).
		n.ctr.unknownRevs.Add(1)
		return nil, false, nil
	}
	if rec, ok := n.takePending(id); ok {
		return rec, false, nil
	}
	now := n.cfg.Now()
	if until, ok := n.youngUntil(id, now); ok {
		rec, err := n.loadYoung(ctx, id, until)
		return rec, false, err
	}
	if n.cfg.Records == nil {
		return nil, false, nil
	}
	if n.neg != nil && n.neg.has(id, now) {
		n.ctr.negativeHits.Add(1)
		return nil, false, nil
	}
	if !n.brk.allow(now) {
		n.ctr.lookupsSkipped.Add(1)
		return nil, false, nil
	}
	rec, err := n.lookupStore(ctx, id)
	if err == errStoreRejected {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	if rec == nil {
		return nil, false, nil
	}
	cp := *rec // each caller gets its own record; State is shared, read-only
	n.noteLoaded(id, cp.Expires)
	return &cp, true, nil
}

// errStoreRejected is lookupStore's answer for a stored value that does not
// open (tampered, moved between keys, another farm's): as good as a miss,
// but not one to wait out.
var errStoreRejected = errors.New("farm: stored session rejected")

// fetch reads and opens the stored session id.
func (n *Node) fetch(ctx context.Context, id session.ID) (*session.Record, error) {
	rec, _, err := n.fetchRecord(ctx, id)
	return rec, err
}

// fetchRecord is fetch, also reporting a value that did not open.
//
// The read is marked transport.PrimaryRead, whatever ctx says: a record
// is what the farm resumes a session from, and a replica that lags its
// primary may answer with one that a grace cut has since shortened, or
// a retirement or deletion removed: the node would resume it whole
// (TestClusterLaggingFollowerLookupReadsLeader, natsbus). So a lookup
// costs what the primary's read costs: on Redis with read_only or
// route_*, a read from the key's master; on NATS, a get from the stream's
// leader where the bucket has more than one replica (a direct get where
// its only replica is the leader).
func (n *Node) fetchRecord(ctx context.Context, id session.ID) (rec *session.Record, rejected bool, err error) {
	n.ctr.lookups.Add(1)
	v, err := n.cfg.Records.GetRecord(transport.PrimaryRead(ctx), sessionKey(id))
	switch {
	case errors.Is(err, transport.ErrNotFound):
		n.ctr.storeMisses.Add(1)
		return nil, false, nil
	case errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil:
		n.ctr.storeTimeouts.Add(1)
		return nil, false, err
	case err != nil:
		n.ctr.storeErrors.Add(1)
		return nil, false, err
	}
	_, body, err := n.keys.open(v, n.cfg.Farm, valRecord, id[:], n.cfg.Now(), 0, n.cfg.MaxSkew)
	if err != nil {
		n.ctr.storeRejected.Add(1)
		return nil, true, nil
	}
	var r session.Record
	if err := r.UnmarshalBinary(body); err != nil {
		n.ctr.storeRejected.Add(1)
		return nil, true, nil
	}
	n.ctr.storeHits.Add(1)
	return &r, false, nil
}
