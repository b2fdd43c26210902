package farm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/session"
)

// A revocation by ID: RevokeSession of a session that neither this node
// nor the store knows, past its young window (see awaitYoung), cannot
// learn the session's chain. Its issuer may hold it all the same, cut off
// from the farm when it issued it (its write and its message lost, no
// carried copy), and would write it to the store and serve it again once
// it returns. So the revocation is recorded by the session's ID: added to
// the store's set revokedIDsKey, beside the tombstones, and published on
// the bus (msgRevokeIDs), with a mark of its own in the record store for
// the hit gate (revokedIDMarkKey). Every node keeps the IDs it learns (at most
// maxRecordedIDs), and a node that holds one of them, or comes to (a
// peer's message, a store lookup), revokes its chain through the normal
// path (addRevocation: tombstone, marks, message). The returning issuer
// reads the set when its heal reads the revocations, and before it writes
// the sessions it kept through the outage (see catchUpIDs).

// revokedIDsKey names the Coordinator's set of session IDs revoked while
// no reachable node knew them, each member a revokedID sealed as
// valRevokedID, lapsing with it.
const revokedIDsKey = "revoked-ids"

// maxRecordedIDs bounds the IDs revoked by ID that a node keeps in memory
// (about 100 bytes each, some 1 MB in all). When full, the entry that
// lapses first makes room. The store's set is bounded by
// transport.MaxSetMembers.
const maxRecordedIDs = 10000

// revokedIDLen is the length of a revokedID in a body: the ID and its
// lapse (Unix ns).
const revokedIDLen = session.IDLen + 8

// A revokedID is one session revoked by ID, until a session of that ID
// could no longer resume anywhere.
type revokedID struct {
	id    session.ID
	until time.Time
}

// appendRevokedIDs appends repeated { id (26) | until (8, Unix ns) }.
func appendRevokedIDs(b []byte, rs []revokedID) []byte {
	for _, r := range rs {
		b = append(b, r.id[:]...)
		b = binary.BigEndian.AppendUint64(b, uint64(r.until.UnixNano()))
	}
	return b
}

// parseRevokedIDs decodes a msgRevokeIDs or valRevokedID body.
func parseRevokedIDs(body []byte) ([]revokedID, error) {
	if len(body) == 0 || len(body)%revokedIDLen != 0 {
		return nil, errors.New("revoked ID body has a bad length")
	}
	out := make([]revokedID, 0, len(body)/revokedIDLen)
	for ; len(body) > 0; body = body[revokedIDLen:] {
		var r revokedID
		copy(r.id[:], body)
		r.until = time.Unix(0, int64(binary.BigEndian.Uint64(body[session.IDLen:])))
		out = append(out, r)
	}
	return out, nil
}

// recordedIDs is what a node knows of the sessions revoked by ID.
type recordedIDs struct {
	mu sync.Mutex
	m  map[session.ID]time.Time // until
	// n is len(m), read without mu: the hot paths (a peer's insert, a
	// store lookup) look no further while it is 0.
	n atomic.Int64

	// readMu serialises reads of the store's set; version is the set's
	// version at the last read that applied it whole (valid: there is
	// one).
	readMu  sync.Mutex
	version []byte
	valid   bool

	// owed and read count the store writes of new sessions that failed
	// (they went to the catch-up backlog) and the first of them that a
	// read of the set has followed: the catch-up waits for a read while
	// read < owed (see catchUpIDs).
	owed, read atomic.Uint64

	recorded, received, applied atomic.Uint64 // counters

	fileErrLogged atomic.Bool // a write of the file beside Config.RevocationFile failed, and was logged
}

// add records rs, and returns those not known before or known until an
// earlier time. Past maxRecordedIDs, the entry that lapses first goes.
func (r *recordedIDs) add(rs []revokedID, now time.Time) []revokedID {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = make(map[session.ID]time.Time)
	}
	var fresh []revokedID
	for _, x := range rs {
		if !x.until.After(now) {
			continue
		}
		if u, ok := r.m[x.id]; ok {
			if x.until.After(u) {
				r.m[x.id] = x.until
			}
			continue
		}
		if len(r.m) >= maxRecordedIDs {
			r.evictLocked(now)
		}
		r.m[x.id] = x.until
		fresh = append(fresh, x)
	}
	r.n.Store(int64(len(r.m)))
	return fresh
}

// evictLocked drops the lapsed entries, or else the one that lapses
// first.
func (r *recordedIDs) evictLocked(now time.Time) {
	var first session.ID
	var firstUntil time.Time
	for id, u := range r.m {
		if !u.After(now) {
			delete(r.m, id)
			continue
		}
		if firstUntil.IsZero() || u.Before(firstUntil) {
			first, firstUntil = id, u
		}
	}
	if len(r.m) >= maxRecordedIDs {
		delete(r.m, first)
	}
}

// has reports whether id is recorded as revoked by ID, and not lapsed.
func (r *recordedIDs) has(id session.ID, now time.Time) bool {
	if r.n.Load() == 0 {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	u, ok := r.m[id]
	if ok && !u.After(now) {
		delete(r.m, id)
		r.n.Store(int64(len(r.m)))
		return false
	}
	return ok
}

// snapshot returns the IDs recorded and not lapsed at now.
func (r *recordedIDs) snapshot(now time.Time) []revokedID {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]revokedID, 0, len(r.m))
	for id, u := range r.m {
		if u.After(now) {
			out = append(out, revokedID{id: id, until: u})
		}
	}
	return out
}

// forget makes the next read of the store's set read it whole (a store
// that lost its data may hand out a version seen before).
func (r *recordedIDs) forget() {
	r.readMu.Lock()
	r.valid = false
	r.readMu.Unlock()
}

// len returns the number of IDs recorded (lapsed ones included until
// they are next looked up or evicted).
func (r *recordedIDs) len() int { return int(r.n.Load()) }

// A pendingID is a revocation by ID on its way to the farm.
type pendingID struct {
	rid revokedID
	// unchecked: the store could not be asked whether it holds the
	// session when it was revoked; it is asked again before the ID is
	// recorded, and the session's chain revoked if it does.
	unchecked bool
	member    []byte // sealed once, so that a retry adds the same member
	stored    bool
	published bool
	done      chan struct{}
}

// revokedIDUntil returns until when a session of id may resume anywhere:
// its issue time (or now, if that is later), plus the cache's Lifetime
// and ResumeGrace, and MaxSkew for the clocks. It reports false if that
// has passed, or if id is not authenticated by the farm's ID keys: no
// node of the farm holds a session under it (a forged ID, or one whose
// key was retired, which stops resuming anyway).
func (n *Node) revokedIDUntil(id session.ID, now time.Time) (time.Time, bool) {
	cc := n.cfg.Cache.Config()
	issued, ok := n.cfg.Cache.IssuedAt(id)
	if !ok {
		return time.Time{}, false
	}
	from := issued
	if issued.After(now) {
		from = now
	}
	until := from.Add(cc.Lifetime + cc.ResumeGrace + n.cfg.MaxSkew)
	return until, until.After(now)
}

// recordRevocation records a revocation of the session id by ID (see
// above): in this node's memory at once, and queued for the store and
// the bus, which the revoker retries until both took it. unchecked says
// the store could not be asked for the session. It returns the done
// channel of the queued revocation, nil if there is nothing to record (the
// session could no longer resume anyway).
func (n *Node) recordRevocation(id session.ID, unchecked bool) <-chan struct{} {
	now := n.cfg.Now()
	until, ok := n.revokedIDUntil(id, now)
	if !ok {
		return nil
	}
	rid := revokedID{id: id, until: until}
	n.rids.add([]revokedID{rid}, now)
	n.rids.recorded.Add(1)
	r := &n.revs
	r.mu.Lock()
	var p *pendingID
	for _, q := range r.ids {
		if q.rid.id == id {
			p = q
			break
		}
	}
	if p == nil {
		p = &pendingID{rid: rid, unchecked: unchecked, stored: n.cfg.Coord == nil, done: make(chan struct{})}
		r.ids = append(r.ids, p)
		n.persistIDsLocked()
	}
	r.mu.Unlock()
	r.signal()
	return p.done
}

// applyIDRevocations tries once to check, store and publish the pending
// revocations by ID, and reports whether all of them succeeded.
func (n *Node) applyIDRevocations(ctx context.Context) bool {
	r := &n.revs
	r.mu.Lock()
	work := make([]*pendingID, len(r.ids))
	copy(work, r.ids)
	r.mu.Unlock()
	if len(work) == 0 {
		return true
	}
	hdr := header{time: n.cfg.Now(), sender: n.instance, farm: n.cfg.Farm}
	ok := true
	var pub []revokedID
	var pubs []*pendingID
	for _, p := range work {
		if p.unchecked && n.cfg.Records != nil {
			// The store was out of reach at the revocation: it may
			// hold the session, whose chain is then revoked as usual.
			fctx, cancel := context.WithTimeout(transport.PrimaryRead(ctx), n.cfg.OpTimeout)
			rec, err := n.fetch(fctx, p.rid.id)
			cancel()
			if err != nil {
				ok = false
				continue
			}
			if rec != nil {
				n.revokeRecord(p.rid.id, rec)
			}
			r.mu.Lock()
			p.unchecked = false
			r.mu.Unlock()
		}
		if !p.stored {
			if p.member == nil {
				h := hdr
				h.typ = valRevokedID
				p.member = n.keys.seal(nil, h, appendRevokedIDs(nil, []revokedID{p.rid}), nil)
			}
			sctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
			err := n.putIDMark(sctx, p)
			if err == nil {
				err = n.cfg.Coord.SetAdd(sctx, revokedIDsKey, p.member, p.rid.until)
			}
			cancel()
			if err != nil {
				ok = false
				n.ctr.storeWriteErrors.Add(1)
				if ctx.Err() == nil {
					n.logOnce(&n.ctr.storeErrLogged, "farm: revocation by ID not yet in the store; retrying", err)
				}
				continue
			}
			r.mu.Lock()
			p.stored = true
			r.mu.Unlock()
		}
		if !p.published {
			pub = append(pub, p.rid)
			pubs = append(pubs, p)
		}
	}
	if len(pub) > 0 {
		if err := n.publishRevokedIDs(ctx, hdr, pub); err != nil {
			ok = false
			n.ctr.publishErrors.Add(1)
			if ctx.Err() == nil {
				n.logOnce(&n.ctr.publishErrLogged, "farm: revocation by ID not yet published; retrying", err)
			}
		} else {
			r.mu.Lock()
			for _, p := range pubs {
				p.published = true
			}
			r.mu.Unlock()
		}
	}
	r.mu.Lock()
	kept := r.ids[:0]
	for _, p := range r.ids {
		if p.stored && p.published && !p.unchecked {
			close(p.done)
			continue
		}
		kept = append(kept, p)
	}
	changed := len(kept) != len(r.ids)
	clear(r.ids[len(kept):])
	r.ids = kept
	if changed {
		n.persistIDsLocked()
	}
	r.mu.Unlock()
	return ok
}

// putIDMark writes the mark of the revocation by ID p to the record
// store, under revokedIDMarkKey, for as long as the revocation lasts: the
// hit gate of a node back from a gap reads it with the chain's mark (see
// checkHit) before its heal has read revokedIDsKey's set.
func (n *Node) putIDMark(ctx context.Context, p *pendingID) error {
	if n.cfg.Records == nil {
		return nil
	}
	ttl := p.rid.until.Sub(n.cfg.Now())
	if ttl <= 0 {
		return nil
	}
	return n.cfg.Records.PutRecords(ctx, transport.Item{Key: revokedIDMarkKey(p.rid.id), Value: p.member, TTL: ttl})
}

// maxIDsPerMessage bounds the revoked IDs in one msgRevokeIDs message,
// well within transport.MaxMessageSize.
const maxIDsPerMessage = 1024

// publishRevokedIDs publishes rs in msgRevokeIDs messages.
func (n *Node) publishRevokedIDs(ctx context.Context, hdr header, rs []revokedID) error {
	hdr.typ = msgRevokeIDs
	var msgs [][]byte
	for len(rs) > 0 {
		k := min(len(rs), maxIDsPerMessage)
		msgs = append(msgs, n.keys.seal(nil, hdr, appendRevokedIDs(nil, rs[:k]), nil))
		rs = rs[k:]
	}
	pctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
	defer cancel()
	return n.publish(pctx, msgs...)
}

// receiveRevokedIDs handles an authentic msgRevokeIDs body: the IDs are
// recorded, and those this node holds revoked by chain.
func (n *Node) receiveRevokedIDs(body []byte) {
	rs, err := parseRevokedIDs(body)
	if err != nil {
		n.ctr.rejected[rejectBody].Add(1)
		return
	}
	n.rids.received.Add(uint64(len(rs)))
	n.learnRevokedIDs(rs)
}

// learnRevokedIDs records rs and revokes the chain of each one this node
// holds (cached, or kept undecoded with LazyPeers).
func (n *Node) learnRevokedIDs(rs []revokedID) {
	for _, r := range n.rids.add(rs, n.cfg.Now()) {
		n.revokeHeldID(r.id)
	}
}

// revokeHeldID revokes the chain of the session id if this node holds it,
// as RevokeSession would, and reports whether it did.
func (n *Node) revokeHeldID(id session.ID) bool {
	if rec, ok := n.cfg.Cache.Remove(id); ok {
		n.removedDone(id, rec)
		n.rids.applied.Add(1)
		n.log.Warn("farm: revoked the chain of a session the farm had revoked by ID while this node was out of its reach")
		return true
	}
	if rec, ok := n.takePending(id); ok {
		n.revokeRecord(id, rec)
		return true
	}
	return false
}

// revokeRecord revokes the chain of rec, the session id's record, which
// the cache does not hold: tombstoned here, then queued for the farm.
func (n *Node) revokeRecord(id session.ID, rec *session.Record) {
	rev := revocation{chain: rec.Chain, until: n.cfg.Cache.ChainEnd(*rec), start: rec.ChainStart}
	n.cfg.Cache.RemoveChain(rev.chain, rev.until, session.OriginPeer)
	n.addRevocation(id, rev)
	n.rids.applied.Add(1)
}

// refuseRevokedID reports whether the session id, which a lookup brought
// as rec, was revoked by ID; if so its chain is revoked.
func (n *Node) refuseRevokedID(id session.ID, rec *session.Record) bool {
	if rec == nil || n.rids.len() == 0 || !n.rids.has(id, n.cfg.Now()) {
		return false
	}
	n.revokeRecord(id, rec)
	return true
}

// readRevokedIDs reads the store's set of revocations by ID, records them
// and revokes the chains of those this node holds. A set whose version is
// unchanged since the last read is not read again.
func (n *Node) readRevokedIDs(ctx context.Context) error {
	return n.readRevokedIDsAs(ctx, true)
}

// errIDReadBusy is readRevokedIDsAs's answer, without wait, while another
// read is under way.
var errIDReadBusy = errors.New("farm: a read of the revocations by ID is under way")

// readRevokedIDsAs is readRevokedIDs; without wait, it returns
// errIDReadBusy at once if another read is under way (the healer's, which
// a hung store may hold for its whole bound).
func (n *Node) readRevokedIDsAs(ctx context.Context, wait bool) error {
	if n.cfg.Coord == nil {
		return nil
	}
	ctx = transport.PrimaryRead(ctx) // as readTombstones

	r := &n.rids
	if wait {
		r.readMu.Lock()
	} else if !r.readMu.TryLock() {
		return errIDReadBusy
	}
	defer r.readMu.Unlock()
	owed := r.owed.Load()
	version, versioned, err := n.setVersion(ctx, revokedIDsKey)
	if err != nil {
		return err
	}
	if versioned && r.valid && bytes.Equal(version, r.version) {
		r.read.Store(owed)
		return nil
	}
	// OpTimeout, not tombstoneTimeout: the set is small (a revocation
	// of a session no node knows is rare), and a read that fails is
	// tried again at the next heal.
	rctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
	members, err := n.cfg.Coord.SetMembers(rctx, revokedIDsKey)
	cancel()
	if err != nil {
		return err
	}
	now := n.cfg.Now()
	var rs []revokedID
	retry := false
	for _, m := range members {
		_, body, err := n.keys.open(m, n.cfg.Farm, valRevokedID, nil, now, 0, n.cfg.MaxSkew)
		if err != nil {
			n.ctr.storeRejected.Add(1)
			retry = retry || rejection(err) == rejectFuture
			continue
		}
		got, err := parseRevokedIDs(body)
		if err != nil {
			n.ctr.storeRejected.Add(1)
			continue
		}
		rs = append(rs, got...)
	}
	// Every ID in the set is checked against what the node holds, not
	// only those new to it: it may have come to hold one since.
	n.rids.add(rs, now)
	for _, x := range rs {
		if x.until.After(now) {
			n.revokeHeldID(x.id)
		}
	}
	r.version, r.valid = version, versioned && !retry
	r.read.Store(owed)
	return nil
}

// owedIDRead notes that a store write of new sessions failed: before the
// catch-up writes them, the node reads the revocations by ID (see
// catchUpIDs).
func (n *Node) owedIDRead() {
	if n.cfg.Coord != nil {
		n.rids.owed.Add(1)
	}
}

// catchUpIDs is called before the catch-up after an outage writes the
// sessions the node kept through it: unless a read of the revocations by
// ID has followed the last failed write, it reads them now, so that a
// session revoked by ID meanwhile is revoked here (and its kept write
// dropped, see refreshLater) rather than written to the store and served
// again. It returns the read's error: the catch-up waits, for at most
// maxCatchUpIDWaits failed reads in a row (see drain). The read ends when
// closing is done (Close must not wait for a hung store), and is not made
// while another is under way (that one counts as failed here).
func (n *Node) catchUpIDs(ctx, closing context.Context) error {
	if n.cfg.Coord == nil || n.rids.read.Load() >= n.rids.owed.Load() {
		return nil
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(closing, cancel)
	defer stop()
	return n.readRevokedIDsAs(rctx, false)
}

// The revocations by ID not yet stored and published are kept, with
// Config.RevocationFile, in a file of their own beside it (idFileSuffix):
// sealed under idFileContext, its body repeated { id (26) | until (8) |
// unchecked (1) }. It is written whole, and fsynced, each time the list
// changes (revocations by ID are rare), and removed once it is empty; a
// node that restarts queues them again (loadIDRevocations).
const (
	idFileSuffix  = ".ids"
	idFileContext = "pending-revocations-by-id"
	idFileEntry   = revokedIDLen + 1
)

// idFilePath returns the file of the pending revocations by ID, "" without
// Config.RevocationFile.
func (n *Node) idFilePath() string {
	if n.cfg.RevocationFile == "" {
		return ""
	}
	return n.cfg.RevocationFile + idFileSuffix
}

// persistIDsLocked writes the pending revocations by ID to their file (or
// removes it if there are none); n.revs.mu is held. A write that fails is
// logged once; the revocations stay in memory, retried.
func (n *Node) persistIDsLocked() {
	path := n.idFilePath()
	if path == "" {
		return
	}
	r := &n.revs
	if len(r.ids) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			n.logOnce(&n.rids.fileErrLogged, "farm: cannot remove the file of pending revocations by ID", err)
		}
		return
	}
	var body []byte
	for _, p := range r.ids {
		body = appendRevokedIDs(body, []revokedID{p.rid})
		var flag byte
		if p.unchecked {
			flag = 1
		}
		body = append(body, flag)
	}
	hdr := header{typ: valRevokedID, time: n.cfg.Now(), sender: n.instance, farm: n.cfg.Farm}
	if err := writeFileAtomic(path, n.keys.seal(nil, hdr, body, []byte(idFileContext))); err != nil {
		n.logOnce(&n.rids.fileErrLogged, "farm: cannot persist pending revocations by ID; they stay in memory and are retried", err)
		return
	}
	n.rids.fileErrLogged.Store(false)
}

// loadIDRevocations queues again the pending revocations by ID that the
// file beside Config.RevocationFile holds, if any, and records them here.
// A file that does not open is an error, as Config.RevocationFile's is.
func (n *Node) loadIDRevocations() error {
	path := n.idFilePath()
	if path == "" {
		return nil
	}
	raw, err := readRegular(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	_, body, err := n.keys.openLocal(raw, n.cfg.Farm, valRevokedID, []byte(idFileContext), n.cfg.Now())
	if err != nil || len(body)%idFileEntry != 0 {
		return fmt.Errorf("farm: the file of pending revocations by ID %s does not open: %v", path, err)
	}
	now := n.cfg.Now()
	var rs []revokedID
	r := &n.revs
	r.mu.Lock()
	for ; len(body) > 0; body = body[idFileEntry:] {
		got, _ := parseRevokedIDs(body[:revokedIDLen])
		rid := got[0]
		if !rid.until.After(now) {
			continue
		}
		rs = append(rs, rid)
		r.ids = append(r.ids, &pendingID{rid: rid, unchecked: body[revokedIDLen] == 1, stored: n.cfg.Coord == nil, done: make(chan struct{})})
	}
	n.persistIDsLocked()
	r.mu.Unlock()
	n.rids.add(rs, now)
	r.signal()
	return nil
}
