package farm

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash/maphash"
	"iter"
	"sync"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/session"
)

// revoke revokes the session id across the farm: its whole resumption chain
// stops resuming on every node, including those that only have it in the
// store. It reports false if neither this node nor the store knows id.
func (n *Node) revoke(ctx context.Context, id session.ID) (bool, error) {
	if rec, ok := n.cfg.Cache.Remove(id); ok {
		n.removedDone(id, rec)
		return true, nil
	}
	rec, ok := n.takePending(id)
	if !ok && n.cfg.Records == nil {
		return false, nil
	}
	if !ok {
		_, found, err := n.revokeUnheld(ctx, id)
		return found, err
	}
	rev := revocation{chain: rec.Chain, until: n.cfg.Cache.ChainEnd(*rec), start: rec.ChainStart}
	// Tombstone locally (nothing cached, so no REMOVE event), then publish.
	n.cfg.Cache.RemoveChain(rev.chain, rev.until, session.OriginPeer)
	n.addRevocation(id, rev)
	return true, nil
}

// removedDone returns the done channel of the revocation of rec's chain
// once session.Cache.Remove has removed rec, the session id, from this
// node's cache. Its REMOVE hook queues the revocation, but only if it was
// Remove that removed a session of the chain: a peer's revocation of the
// chain may have tombstoned it, and its scan removed the session (firing
// the REMOVE event as the peer's), between Remove finding the session and
// its own scan. The chain is then revoked in the cache until rec's end by
// this node's reckoning, and nothing was queued for the farm: the store
// and the other nodes would keep only the peer's end, earlier if this
// node's MaxChainLifetime is longer (a node that joins afterwards takes
// the chain for live again after it). So it queues the revocation itself
// when none of the chain is pending, and the revoker has not just applied
// one of it until rec's end or later: the hook fires from within Remove's
// scan of the cache, which goes on after it, and the revoker often
// applied the hook's revocation (a store round trip) before Remove
// returned. Queued again, it was written and published once more: a
// second tombstone, sealed anew, for one revocation.
func (n *Node) removedDone(id session.ID, rec session.Record) <-chan struct{} {
	rev := revocation{chain: rec.Chain, until: n.cfg.Cache.ChainEnd(rec), start: rec.ChainStart}
	r := &n.revs
	r.mu.Lock()
	if p := r.byChain[rev.chain]; p != nil {
		r.mu.Unlock()
		return p.done
	}
	if r.appliedLocked(rev.chain, rev.until) {
		r.mu.Unlock()
		return closedDone
	}
	p := n.addRevocationLocked(id, rev)
	n.persistAddLocked(id, rev)
	r.mu.Unlock()
	r.signal()
	return p.done
}

// closedDone is the done channel of a revocation already applied.
var closedDone = func() <-chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// revokeUnheld revokes the session id, which this node's cache does not
// hold, from what the store knows of it: its record, or else the mark a
// revocation of it left (see revokedMark). It reports whether either was
// found, and returns the revocation's done channel (nil: nothing left to
// apply). A session revoked elsewhere is revoked again until the end of
// its chain by this node's reckoning, when that is later than the end
// this node knows: nodes whose MaxChainLifetime differs end a chain at
// different times, and the store must refuse it until the latest, or a
// node that reads only the store (one that joins, one that heals from
// it) takes the chain for live again after the earlier end.
func (n *Node) revokeUnheld(ctx context.Context, id session.ID) (done <-chan struct{}, found bool, err error) {
	// What the store knows of id, from its primary: a replica that lags
	// has neither the record nor the mark of a session just written or
	// revoked, and the revocation would find nothing to revoke.
	ctx = transport.PrimaryRead(ctx)
	rec, err := n.fetch(ctx, id)
	if err != nil {
		return nil, false, err
	}
	var rev revocation
	if rec != nil {
		rev = revocation{chain: rec.Chain, until: n.cfg.Cache.ChainEnd(*rec), start: rec.ChainStart}
	} else {
		var known bool
		rev, known, err = n.markedRevocation(ctx, id)
		if err != nil {
			return nil, false, err
		}
		if !known {
			// Neither record nor mark: a young session may still be
			// on its way (its issuer's write waiting in a flush
			// window, or slow), while its client resumes it from
			// the copy its ticket carries.
			if rec = n.awaitYoung(ctx, id); rec == nil {
				return nil, false, ctx.Err()
			}
			rev = revocation{chain: rec.Chain, until: n.cfg.Cache.ChainEnd(*rec), start: rec.ChainStart}
		} else if !n.revokesLater(rev) {
			// Revoked at least that long: only wait for a revocation
			// of the chain still on its way.
			return n.revocationDone(rev.chain), true, nil
		}
	}
	// Tombstone locally (nothing cached, so no REMOVE event), then publish.
	n.cfg.Cache.RemoveChain(rev.chain, rev.until, session.OriginPeer)
	done, _ = n.addRevocation(id, rev)
	return done, true, nil
}

// awaitYoung waits for the session id, which neither this node nor the
// store holds, while id is young (see youngUntil) and ctx lasts, as a
// lookup does (see loadYoung), and returns it if the bus or the store
// brought it meanwhile; nil if id is not young, or its session did not
// come. Without it, a revocation made within the young window on a node
// that had not heard of the session found nothing, and the session went
// on resuming on its issuer, and from its carried copy anywhere.
func (n *Node) awaitYoung(ctx context.Context, id session.ID) *session.Record {
	until, ok := n.youngUntil(id, n.cfg.Now())
	if !ok {
		return nil
	}
	rec, _ := n.loadYoung(ctx, id, until)
	return rec
}

// revokesLater reports whether rev revokes its chain until later than the
// cache remembers it revoked (or the cache does not).
func (n *Node) revokesLater(rev revocation) bool {
	for chain, until := range n.cfg.Cache.Revocations() {
		if chain == rev.chain {
			return rev.until.After(until)
		}
	}
	return true
}

// revokedKeyPrefix begins the key of a revoked session's mark (see
// revokedMark), beside its record's key in the record store.
const revokedKeyPrefix = "r:"

// revokedKey returns the key of the mark that a revocation of the session
// id leaves in the store.
func revokedKey(id session.ID) string {
	return revokedKeyPrefix + hex.EncodeToString(id[:])
}

// revokedMark returns the mark that a revocation rev of the session id
// leaves in the store when it deletes the session's record, sealed under
// hdr's time: the chain and, where known, its start, bound to id. Without
// it, a node whose chains end later than the revoker's (a longer
// MaxChainLifetime) could no longer tell the chain of id once the record
// was gone, and could not revoke it until its own end (see
// revokeUnheld). The mark lives as long as the record could have (id's
// issue time plus the cache's Lifetime), never past rev: a session looked
// up later would not have been found anyway, and a store whose record
// area ages by the session lifetime (a NATS server before 2.11) need not
// keep records longer for it. It reports false if there is nothing left
// to mark.
func (n *Node) revokedMark(hdr header, id session.ID, rev revocation) (transport.Item, bool) {
	end := rev.until
	if issued, ok := n.cfg.Cache.IssuedAt(id); ok {
		if life := issued.Add(n.cfg.Cache.Config().Lifetime); life.Before(end) {
			end = life
		}
	}
	ttl := end.Sub(hdr.time)
	if ttl <= 0 {
		return transport.Item{}, false
	}
	var body [16]byte
	binary.BigEndian.PutUint64(body[:8], rev.chain)
	if !rev.start.IsZero() {
		binary.BigEndian.PutUint64(body[8:], uint64(rev.start.UnixNano()))
	}
	hdr.typ = valRevoked
	return transport.Item{Key: revokedKey(id), Value: n.keys.seal(nil, hdr, body[:], id[:]), TTL: ttl}, true
}

// markedRevocation reads the mark a revocation of the session id left in
// the store (see revokedMark) and returns the revocation this node would
// make of id's chain: until the chain's start plus the cache's
// MaxChainLifetime, or, where the mark does not know the start, until
// id's issue time plus it (a chain starts no later than its sessions are
// issued). It reports false if there is no mark, or none that opens.
func (n *Node) markedRevocation(ctx context.Context, id session.ID) (revocation, bool, error) {
	v, err := n.cfg.Records.GetRecord(ctx, revokedKey(id))
	if errors.Is(err, transport.ErrNotFound) {
		return revocation{}, false, nil
	}
	if err != nil {
		return revocation{}, false, err
	}
	_, body, err := n.keys.open(v, n.cfg.Farm, valRevoked, id[:], n.cfg.Now(), 0, n.cfg.MaxSkew)
	if err != nil || len(body) != 16 {
		n.ctr.storeRejected.Add(1)
		return revocation{}, false, nil
	}
	rev := revocation{chain: binary.BigEndian.Uint64(body[:8])}
	if s := int64(binary.BigEndian.Uint64(body[8:])); s != 0 {
		rev.start = time.Unix(0, s)
	} else if issued, ok := n.cfg.Cache.IssuedAt(id); ok {
		rev.start = issued
	} else {
		return revocation{}, false, nil
	}
	rev.until = n.cfg.Cache.ChainEnd(session.Record{ChainStart: rev.start})
	return rev, true, nil
}

// healer reads the store's revocations first for Join (see firstSync),
// then again periodically and on reconnect; until a read has succeeded,
// and while the subscription is up after a gap left to heal (see
// gapOpen), it retries with backoff.
func (n *Node) healer(ctx context.Context) {
	defer n.wg.Done()
	n.firstSync(ctx)
	// Within Join's wait too: a read left in flight when Join returns
	// holds a connection of a transport that hangs meanwhile for its
	// whole deadline, which a client may keep past a cancel.
	n.readRevokedIDs(ctx)
	if n.cfg.Records != nil {
		// Within Join's wait too: the node finds that the store lost
		// its data by a change of the generation record since its last
		// read, so a loss before its first read goes unseen (no
		// write-back of its sessions or of the revocations it
		// remembers, no priming of the strike register). Read here,
		// the generation is known before Join returns and the node
		// issues anything, unless the store is slow to answer. The
		// first read finds no loss, so it writes nothing back.
		n.checkGeneration(ctx)
	}
	close(n.synced)
	t := time.NewTicker(n.cfg.HealInterval)
	defer t.Stop()
	for failures := 1; ; {
		// Until a read has succeeded, and while the node's subscription
		// is up after a gap that no heal has closed (its hit gate stays
		// on: see gapOpen; its delivery may not be marked yet), the
		// next heal comes after a backoff, not a HealInterval: a heal
		// that failed there (on a store still cut off, or refusing
		// during an election) left every hit paying a store read until
		// the next tick, 30 s by default.
		var retry <-chan time.Time
		if !n.revsKnown.Load() || (n.gap.Load()&gapOpen != 0 && n.connected.Load()) {
			retry = time.After(backoff(failures))
			failures++
		} else {
			failures = 1
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-n.heal:
		case <-retry:
		}
		g, up := n.healStart()
		errT := n.readTombstones(ctx)
		// Before a write-back: a session revoked by ID is revoked,
		// not written back.
		errI := n.readRevokedIDs(ctx)
		if (errT != nil || errI != nil) && ctx.Err() == nil {
			n.ctr.tombstoneReadFailures.Add(1)
		}
		if up && errT == nil && errI == nil {
			n.closeGap(g) // both read since the subscription came back
		}
		if n.cfg.Records != nil {
			n.checkGeneration(ctx)
		}
	}
}

// tombstoneTimeout bounds one read of the farm's revocations whole from
// the store: the set may hold transport.MaxSetMembers of them, which a
// transport reads in many requests (pages, or a watcher's stream), so the
// read gets OpTimeout, meant for one request, and perTombstone more for
// each member the set may hold. The check of the set's version that comes
// first, one short request, gets OpTimeout; opening and applying the
// members, the node's own work, is not bounded.
func (n *Node) tombstoneTimeout() time.Duration {
	return n.cfg.OpTimeout + transport.MaxSetMembers*perTombstone
}

// perTombstone is what tombstoneTimeout allows for each member of the set
// (25 s for a full one, under the default HealInterval): on a 2-core VM a
// full set of 150-byte members took 0.2 s from a private Redis (paged;
// 1.9 s with the one script before), 2-3 s from NATS, and 10-30 s from
// NATS with the client built with -race on a loaded VM.
const perTombstone = 250 * time.Microsecond

// tombstoneReads is what a node remembers of its reads of the farm's
// revocations, so that a heal that finds the set unchanged costs one short
// request (the set's version, where the Coordinator is a
// transport.SetVersioner), and one that finds it changed opens only the
// members it has not opened before.
type tombstoneReads struct {
	mu sync.Mutex // one read at a time (the healer's, the rotator's)

	// version is the set's version before the last read that applied
	// every member it found; valid says there is one. A version the store
	// returns again means no member was added since.
	version []byte
	valid   bool

	// seen holds a keyed hash (128 bits, keyed per node) of each member of
	// the set at the last read that the node need not open again: it
	// applied its revocations (each for as long as the cache remembers
	// one, see again), or the member will never open (a forgery, another
	// farm's). It holds only what that read found, so at most
	// transport.MaxSetMembers of them, some 2 MB at most.
	seen  map[[2]uint64]struct{}
	seeds [2]maphash.Seed

	// again is when the read must be made whole again, version or not
	// (0: never): a member whose revocation outlives what the cache
	// remembers from now (a peer with a longer MaxChainLifetime, or a
	// clock ahead) is applied anew halfway to then, as every heal did
	// before.
	again time.Time
}

// forget makes the next read of the revocations read the set whole (the
// members already opened are not opened again).
func (t *tombstoneReads) forget() {
	t.mu.Lock()
	t.valid = false
	t.mu.Unlock()
}

// readTombstones reads the revocations in the store and applies them to the
// cache. The first time it succeeds, the node's revocations are known (see
// Join). It first asks for the set's version, where the Coordinator tells
// it: unchanged since the last read, and with nothing to apply again, the
// set is not read. Otherwise it reads the set and opens the members it has
// not opened before. A read of the set that fails or is cut short by its
// bound (tombstoneTimeout; a transport returns all of the set or an error)
// leaves the revocations unknown, if they were, and the next read whole.
func (n *Node) readTombstones(ctx context.Context) error {
	// The version and the set from the store's primary: a replica that
	// lags answers the version a heal saw before (the set unchanged, not
	// read) and lacks the tombstones added since, and the heal closed a
	// gap having read none of them.
	ctx = transport.PrimaryRead(ctx)
	t := &n.tombs
	t.mu.Lock()
	defer t.mu.Unlock()
	now := n.cfg.Now()
	version, versioned, err := n.setVersion(ctx, tombstoneKey)
	if err != nil {
		return err
	}
	if versioned && t.valid && bytes.Equal(version, t.version) && (t.again.IsZero() || now.Before(t.again)) {
		n.ctr.tombstoneReadsUnchanged.Add(1)
		n.tombstonesKnown()
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, n.tombstoneTimeout())
	members, err := n.cfg.Coord.SetMembers(rctx, tombstoneKey)
	cancel()
	if err != nil {
		return err
	}
	if len(members) >= transport.MaxSetMembers {
		n.ctr.tombstonesTruncated.Add(1)
		members = members[:transport.MaxSetMembers]
	}
	if t.seen == nil {
		t.seeds = [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}
	}
	seen := make(map[[2]uint64]struct{}, len(members))
	var apply []revocation // applied at once, in one pass over the cache
	retry := false
	var again time.Time
	cover := n.cfg.Cache.Config().MaxChainLifetime
	for _, m := range members {
		h := [2]uint64{maphash.Bytes(t.seeds[0], m), maphash.Bytes(t.seeds[1], m)}
		if _, ok := t.seen[h]; ok {
			seen[h] = struct{}{}
			continue
		}
		n.ctr.tombstonesOpened.Add(1)
		_, body, err := n.keys.open(m, n.cfg.Farm, valTombstone, nil, now, 0, n.cfg.MaxSkew)
		if err != nil {
			n.ctr.storeRejected.Add(1)
			if rejection(err) == rejectFuture {
				retry = true // it may open later: read it again
			} else {
				seen[h] = struct{}{} // it never will
			}
			continue
		}
		revs, err := parseRevocations(body)
		if err != nil {
			n.ctr.storeRejected.Add(1)
			seen[h] = struct{}{}
			continue
		}
		whole := true
		apply = append(apply, revs...)
		for _, r := range revs {
			if end := now.Add(cover); r.until.After(end) {
				// The cache remembers it until end only: apply it
				// again before then.
				whole = false
				if at := now.Add(cover / 2); again.IsZero() || at.Before(again) {
					again = at
				}
			}
		}
		if whole {
			seen[h] = struct{}{}
		}
	}
	// Every tombstone in place before the revocations count as known.
	n.cfg.Cache.RemoveChains(revocationSeq(apply), session.OriginPeer)
	t.seen, t.again = seen, again
	t.version, t.valid = version, versioned && !retry
	n.ctr.tombstoneReads.Add(1)
	n.tombstonesKnown()
	return nil
}

// setVersion asks the Coordinator for the version of the set at key, where
// it can tell it (transport.SetVersioner): versioned is false, and version
// nil, where it cannot. A set whose version is unchanged since a node's last
// whole read need not be read again.
func (n *Node) setVersion(ctx context.Context, key string) (version []byte, versioned bool, err error) {
	sv, ok := n.cfg.Coord.(transport.SetVersioner)
	if !ok {
		return nil, false, nil
	}
	vctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
	defer cancel()
	v, err := sv.SetVersion(vctx, key)
	if err != nil {
		return nil, true, err
	}
	return v, true, nil
}

// revocationSeq yields each of revs' chains with its time, for
// session.Cache.RemoveChains.
func revocationSeq(revs []revocation) iter.Seq2[uint64, time.Time] {
	return func(yield func(uint64, time.Time) bool) {
		for _, r := range revs {
			if !yield(r.chain, r.until) {
				return
			}
		}
	}
}

// tombstonesKnown records that a read of the revocations succeeded.
func (n *Node) tombstonesKnown() {
	if !n.revsKnown.Load() {
		n.setRevocationsKnown()
		if n.revsWarned.Load() {
			n.log.Info("farm: read the farm's revocations; resuming sessions from the farm")
		}
	}
}
