package farm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/session"
)

// listener subscribes to the bus until ctx is done.
func (n *Node) listener(ctx context.Context) {
	defer n.wg.Done()
	for failures := 1; ; failures++ {
		err := n.cfg.Bus.Subscribe(ctx, n.receive, n.busState)
		if ctx.Err() != nil {
			return
		}
		n.busState(false, err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff(failures)):
		}
	}
}

// gapLogEvery bounds how often the node logs the gaps in a bus
// subscription that stays up (transport.ErrMessagesDropped): a slow
// consumer may report several a second.
const gapLogEvery = time.Minute

func (n *Node) busState(up bool, err error) {
	if up && !n.connected.Load() {
		// Before the subscription counts as up: see checkHit.
		n.upProbeBegun.Store(n.storeProbe.begunCount())
		// Which server it is on now, before its mark counts again.
		n.pm.subscribed()
	}
	was := n.connected.Swap(up)
	n.busHeard()
	// Join's first read of the revocations waits for this (see firstSync).
	defer n.busOnce.Do(func() { close(n.busFirst) })
	defer n.updateFallback()
	// A gap in a subscription that stays up is settled as an outage, but
	// is neither a loss of the bus nor a connect in the logs and metrics.
	gap := n.inGap
	n.inGap = !up && was && errors.Is(err, transport.ErrMessagesDropped)
	switch {
	case up && !was:
		// What the subscription missed while it was down is busUp's to
		// settle: each sender's next tally is a new baseline.
		n.tly.reset()
		n.revs.signal()
		if !gap {
			n.ctr.connects.Add(1)
			n.log.Info("farm: connected to the bus")
		}
		// Catch up on revocations published while we were away.
		select {
		case n.heal <- struct{}{}:
		default:
		}
		// And on retirements and grace cuts: kept by the bus, or
		// checked against the store's records, or not vouched for.
		cause := gapOutage
		if gap {
			cause = gapDropped
		}
		n.busUp(err, cause)
	case !up:
		n.openGap() // after n.connected is false: see healStart
		n.tly.reset()
		now := n.cfg.Now()
		n.busDown(now)
		switch {
		case n.inGap:
			n.busGap(now, err)
		case was:
			n.log.Warn("farm: lost the bus; serving from the local cache", "err", err)
		}
	}
}

// busGap counts a gap in a subscription that stays up, and logs it with
// those since the last line, at most every gapLogEvery.
func (n *Node) busGap(now time.Time, err error) {
	n.ctr.busGaps.Add(1)
	n.gapsUnlogged++
	if !n.gapLogged.IsZero() && now.Sub(n.gapLogged) < gapLogEvery {
		return
	}
	n.log.Warn("farm: the bus dropped messages with the subscription up; settled as after an outage (logged at most once a minute)",
		"gaps", n.gapsUnlogged, "err", err)
	n.gapLogged, n.gapsUnlogged = now, 0
}

// receive handles one message from the bus.
func (n *Node) receive(msg []byte) {
	n.ctr.received.Add(1)
	h, off, err := parseHeader(msg)
	if err != nil {
		n.ctr.rejected[rejection(err)].Add(1)
		return
	}
	if h.sender == n.instance {
		n.ctr.self.Add(1)
		return
	}
	now := n.cfg.Now()
	// The type is not authentic yet: here it only picks the age bound,
	// which keeps the check before authentication cheap. A message whose
	// type was changed, to pass for one that may be older, fails
	// authentication (the header is additional data).
	// The bus hands msg over (see transport.Bus.Subscribe): decrypt it in place.
	body, err := n.keys.openParsed(msg, h, off, n.cfg.Farm, 0, nil, now, n.maxAgeFor(h.typ), n.cfg.MaxSkew, msg[off+nonceLen:off+nonceLen])
	if err != nil {
		n.ctr.rejected[rejection(err)].Add(1)
		return
	}
	if n.tly.on {
		n.tly.count(h.sender, h.time, now)
	}
	n.lag.observe(now.Sub(h.time))
	old := now.Sub(h.time) > n.cfg.MaxAge
	switch h.typ {
	case msgSessions:
		if old || n.fromBeforeGap(h.time) {
			if err := n.receiveOldSessions(body, h.time, now, old); err != nil {
				n.ctr.rejected[rejectBody].Add(1)
			}
			return
		}
		if n.pend != nil {
			if err := n.receiveLazy(body, now); err != nil {
				n.ctr.rejected[rejectBody].Add(1)
			}
			return
		}
		n.receiveSessions(body, now)
	case msgCut:
		n.receiveCuts(body, h.time)
	case msgResend:
		n.receiveResend(body)
	case msgTally:
		if n.tly.on {
			n.receiveTally(h, body, old)
		}
	case msgRevokeIDs:
		n.receiveRevokedIDs(body)
	case msgMark:
		if n.pm.on {
			n.receiveMark(h, body)
		}
	case msgRevoke:
		revs, err := parseRevocations(body)
		if err != nil {
			n.ctr.rejected[rejectBody].Add(1)
			return
		}
		n.ctr.receivedRevocations.Add(uint64(len(revs)))
		// One pass over the cache for the whole message (a revoker's
		// batch, or a re-send of many).
		n.cfg.Cache.RemoveChains(func(yield func(uint64, time.Time) bool) {
			for _, r := range revs {
				if old && !r.until.After(now) {
					// The chain resumes nowhere any more: nothing
					// to do, and no scan of the cache for a replay.
					continue
				}
				if !yield(r.chain, r.until) {
					return
				}
			}
		}, session.OriginPeer)
	default:
		n.handlersMu.Lock()
		fn := n.handlers[h.typ]
		n.handlersMu.Unlock()
		if fn == nil {
			n.ctr.rejected[rejectType].Add(1)
			return
		}
		fn(h, body)
	}
}

// maxAgeFor returns the oldest message of type t accepted from the bus.
// Most types are refused past MaxAge, a bound on replays. The messages
// that only restrict what may resume — retirements and grace cuts
// (msgCut), revocations (msgRevoke) — are taken at any age their subject
// may still be alive at, for a bus that kept them through an outage
// (transport.MessageKeeper) to deliver them late: session IDs and chains
// are random and never reused, so one replayed changes nothing that was
// not already so (a retirement or a revocation applied again, a cut to
// the same instant). A cut sent at T concerns a session issued before T,
// which ends by T plus the cache's Lifetime; a revocation, a chain that
// ends within MaxChainLifetime; MaxSkew more leaves room for the clocks
// that wrote those times. A message of sessions (msgSessions) is taken
// as long as a cut, for the grace cuts of the parents its sessions imply
// (see receiveOldSessions), but its sessions are inserted only within
// MaxAge. A tally (msgTally) is taken as long as a cut, so that one a bus
// kept through an outage is counted among the sender's messages, not
// refused; it is checked only within MaxAge (see receiveTally). A
// revocation by ID (msgRevokeIDs) is taken as long as a session of that ID
// may resume: a cut's age plus the cache's ResumeGrace, or a revocation's,
// whichever is longer.
func (n *Node) maxAgeFor(t envType) time.Duration {
	switch t {
	case msgCut, msgSessions, msgTally:
		return n.cutAge
	case msgRevoke:
		return n.revokeAge
	case msgRevokeIDs:
		// Each ID carries when it lapses (see revokedIDUntil).
		return max(n.revokeAge, n.cutAge+n.cfg.Cache.Config().ResumeGrace)
	}
	return n.cfg.MaxAge
}

// receiveOldSessions handles an authentic msgSessions body sealed at sent,
// more than MaxAge ago (old: a bus kept it through an outage), or before
// the last gap the node settled (see fromBeforeGap): its sessions are not
// inserted (counted, as old or as from before the gap), but what their
// arrival implies of other sessions is applied. In broadcast mode a resumption's grace cut travels
// only with its child (see enqueue): each session with a parent cuts the
// parent to the cache's ResumeGrace past when the child was issued (see
// childIssued), as Insert does with a child that arrives in time, or
// retires it if that time has passed; with LazyPeers a held copy of the
// parent is dropped, as receiveLazy does. A body that does not decode
// changes nothing.
func (n *Node) receiveOldSessions(body []byte, sent, now time.Time, old bool) error {
	type resumed struct {
		parent session.ID
		at     time.Time
	}
	var parents []resumed
	count := 0
	for len(body) > 0 {
		if len(body) < session.IDLen+4 {
			return errShortRecord
		}
		id := session.ID(body[:session.IDLen])
		l := binary.BigEndian.Uint32(body[session.IDLen:])
		body = body[session.IDLen+4:]
		if uint64(l) > uint64(len(body)) || l < recMinLen {
			return errShortRecord
		}
		rec := body[:l]
		body = body[l:]
		count++
		if p := session.ID(rec[recParentAt : recParentAt+session.IDLen]); p != (session.ID{}) {
			expires := time.Unix(0, int64(binary.BigEndian.Uint64(rec[recExpiresAt:])))
			parents = append(parents, resumed{p, n.childIssued(id, expires, sent)})
		}
	}
	n.ctr.receivedSessions.Add(uint64(count))
	if old {
		n.ctr.oldSessions.Add(uint64(count))
	} else {
		n.ctr.gapSessions.Add(uint64(count))
	}
	grace := n.cfg.Cache.Config().ResumeGrace
	for _, r := range parents {
		if n.pend != nil {
			n.pend.drop(r.parent)
		}
		if grace <= 0 {
			continue // resumed sessions keep their full Lifetime (see Insert)
		}
		until := r.at.Add(grace)
		if !until.After(now) {
			// Its grace is over everywhere: a later copy must not
			// bring it back.
			held := n.retireFromPeer(r.parent, sent, now)
			n.recutLate(r.parent, time.Time{}, r.at, held)
			continue
		}
		_, held := n.cfg.Cache.Cut(r.parent, until)
		n.noteRecut(r.parent, until)
		n.noteResumed(r.parent, until, now)
		n.recutLate(r.parent, until, r.at, held)
	}
	return nil
}

// childIssued returns when the session id, which expires at expires and
// came in a message sealed at sent, was issued, and so when its parent was
// resumed: the issue time its ID carries, as Insert reads it for a child
// that arrives in time (session.Record.Parent), not the seal, which comes
// later by however long the sender held the message. It is no later than
// sent. The issue time is taken as Insert takes it for the child's life
// (session.Cache.Insert): as the ID says, also when that is earlier than
// expires less the cache's Lifetime (the minter's Lifetime is longer);
// an ID minted before IDs carried their issue time yields an arbitrary
// one, and one before 1970 (only such an ID yields one), or an ID this
// node cannot read (its ID key is no longer held), counts from expires
// less the cache's Lifetime.
func (n *Node) childIssued(id session.ID, expires, sent time.Time) time.Time {
	at := expires.Add(-n.cfg.Cache.Config().Lifetime)
	if t, ok := n.cfg.Cache.IssuedAt(id); ok && t.Unix() >= 0 {
		at = t
	}
	if at.After(sent) {
		at = sent
	}
	return at
}

// itemsPool holds room to decode the received batches that do not fit the
// room receiveSessions has on its stack.
var itemsPool = sync.Pool{New: func() any { return new([]sessionItem) }}

// receiveSessions inserts the sessions of an authentic msgSessions body,
// all of them or, if the body does not decode, none. Decoding allocates
// nothing but each session's server name: a batch of up to 4 sessions is
// decoded on the stack, a larger one into room from itemsPool. The two
// paths stay apart: joined, the pooled slice that is put back would make
// the compiler move the stack room to the heap.
func (n *Node) receiveSessions(body []byte, now time.Time) {
	if countSessions(body) <= 4 {
		var room [4]sessionItem
		items, err := appendParsedSessions(room[:0], body)
		if err != nil {
			n.ctr.rejected[rejectBody].Add(1)
			return
		}
		n.insertSessions(items, now)
		return
	}
	pooled := itemsPool.Get().(*[]sessionItem)
	items, err := appendParsedSessions((*pooled)[:0], body)
	if err != nil {
		n.ctr.rejected[rejectBody].Add(1)
		return // the room is left to the collector
	}
	n.insertSessions(items, now)
	clear(items) // the records alias the message
	*pooled = items[:0]
	itemsPool.Put(pooled)
}

// insertSessions inserts sessions received from a peer, but for those
// retired here lately: a peer's message that was on its way when the
// session was retired (consumed here before the peer's copy arrived) must
// not bring it back.
func (n *Node) insertSessions(items []sessionItem, now time.Time) {
	if !n.revsKnown.Load() {
		// Until the node knows the farm's revocations, a peer's session
		// may be of a revoked chain (one queued on its way as the chain
		// was revoked): leave it to the store (see Join).
		n.ctr.receivedSessions.Add(uint64(len(items)))
		n.ctr.unknownRevs.Add(uint64(len(items)))
		return
	}
	for _, it := range items {
		n.ctr.receivedSessions.Add(1)
		if n.refusesCopy(it.id, now) {
			n.ctr.insertRefused.Add(1)
			continue
		}
		if n.holdsCopy(it.id, &it.rec, now) {
			n.ctr.receivedHeld.Add(1)
			continue
		}
		rec, ok := n.takeCopy(it.id, it.rec, now, true)
		if !ok {
			n.ctr.insertRefused.Add(1)
			continue
		}
		if err := n.cfg.Cache.Insert(it.id, rec, session.OriginPeer); err != nil {
			n.ctr.insertRefused.Add(1)
			continue
		}
		n.peerCopyTaken(it.id, &rec, now)
		n.ctr.inserted.Add(1)
	}
}

// holdsCopy reports whether the cache already holds a peer's copy rec of
// the session id as inserting it would leave it (session.Cache.Holds),
// and nothing kept here would hold the copy back: a carried copy admitted
// here before its issuer's message came, and not resumed here since (a
// TLS 1.2 resumption keeps its session; a TLS 1.3 one cut it, and
// refusesCopy refuses the copy). Its admission did what taking the copy
// would do now (peerCopy, the insert, peerCopyTaken), with the same
// parent: so the copy is not cloned, inserted and linked again. The
// parent's resumption is noted again, as taking the copy would note it,
// so that a peer's copy of the parent stays refused as long as if the
// copy had been taken now.
func (n *Node) holdsCopy(id session.ID, rec *session.Record, now time.Time) bool {
	if !n.cfg.CarrySessions || !n.cfg.Cache.Holds(id, *rec) {
		return false
	}
	if held := n.holdBack(id, rec, now); held != rec {
		return false // refused or cut by what is kept here: as before
	}
	if rec.Parent != (session.ID{}) {
		n.noteChild(rec.Parent, id, rec.Expires, now)
	}
	return true
}

// peerCopy decides whether the node takes a peer's copy rec of the
// session id, one a ticket carried (see admitCarried), and returns it as
// the node takes it: refused if the session was retired here lately or
// resumed here lately (its copy would undo the cut), or if a retirement
// or cut kept here holds it back; cut by such a cut, perhaps. The state
// is kept as it is: the cache made it for the copy. (A copy the bus
// brought takes the same steps in insertSessions, its state copied out
// of its message.) With write-through the arrival wakes the handshakes
// waiting for the session, before it is inserted: a removal that
// follows the insert must find it (see arrivals.forget). The caller then
// inserts the copy and, if the insert took it, calls peerCopyTaken.
func (n *Node) peerCopy(id session.ID, rec session.Record, now time.Time) (session.Record, bool) {
	if n.refusesCopy(id, now) {
		return rec, false
	}
	return n.takeCopy(id, rec, now, false)
}

// refusesCopy reports whether a peer's copy of the session id is refused
// outright: retired here lately, or resumed here lately (its copy would
// undo the cut).
func (n *Node) refusesCopy(id session.ID, now time.Time) bool {
	return n.retired.has(id, now) || n.wasResumed(id, now)
}

// takeCopy is peerCopy for a copy refusesCopy does not refuse. clone
// says rec's state aliases memory the node must not keep (a received
// batch); a carried copy's state is the cache's own (see
// session.CarriedAdmitter).
func (n *Node) takeCopy(id session.ID, rec session.Record, now time.Time, clone bool) (session.Record, bool) {
	held := n.holdBack(id, &rec, now)
	if held == nil {
		return rec, false
	}
	rec = *held // cut here, perhaps
	if clone {
		// Copy the state out of the batch, so that one long-lived
		// session does not keep the whole message in memory.
		rec.State = bytes.Clone(rec.State)
	}
	if n.cfg.WriteThrough {
		n.arr.arrived(arrival{id: id, rec: rec, ok: true})
	}
	return rec, true
}

// peerCopyTaken notes what a peer's copy of the session id implies once
// it is inserted: its parent was resumed (the insert cut it), and the
// node's own store write of the parent, if it made one lately, is cut
// again; a negative cache entry for it goes.
func (n *Node) peerCopyTaken(id session.ID, rec *session.Record, now time.Time) {
	if rec.Parent != (session.ID{}) {
		n.noteChild(rec.Parent, id, rec.Expires, now) // the insert cut it
		n.recutChild(id, rec.Parent, rec.Expires, now)
	}
	if n.neg != nil {
		n.neg.remove(id)
	}
}

// noteResumed records that the session id was resumed lately, and so cut
// to its grace, to end at until (by this node's handshake, a peer's child,
// or a peer's cut message), for as long as a peer's message that carries
// it whole may be accepted (MaxAge plus MaxSkew): such a copy, inserted,
// would undo the cut (someone on the bus may replay one, or it may come
// after its child). The store's record may be whole as long: the cut's
// write is the resumer's, on its store path, which may be slower than the
// bus (or this node's own, queued); the loader cuts what it loads to the
// earliest end recorded (see cachePeer.Load). A session resumed keeps its
// full life without a grace: nothing to record.
func (n *Node) noteResumed(id session.ID, until, now time.Time) {
	if n.resumed != nil && n.cfg.Cache.Config().ResumeGrace > 0 {
		n.resumed.addEnd(id, now, until)
		n.resumedNotes.Add(1)
	}
}

// noteChild is noteResumed for the parent of a peer's session id, which
// expires at expires: it was resumed when id was issued (see childIssued),
// and its grace ends the cache's ResumeGrace later, as inserting id cuts
// it (session.Cache.Insert).
func (n *Node) noteChild(parent, id session.ID, expires, now time.Time) {
	if g := n.cfg.Cache.Config().ResumeGrace; g > 0 && n.resumed != nil {
		n.noteResumed(parent, n.childIssued(id, expires, now).Add(g), now)
	}
}

// resumedEnd reports the end of the grace cut of id that this node heard
// of lately (the earliest), if it remembers one.
func (n *Node) resumedEnd(id session.ID, now time.Time) (time.Time, bool) {
	if n.resumed == nil {
		return time.Time{}, false
	}
	return n.resumed.end(id, now)
}

// wasResumed reports whether noteResumed recorded id lately: a peer's
// copy of it is refused (a lookup finds the store's record, cut).
func (n *Node) wasResumed(id session.ID, now time.Time) bool {
	return n.resumed != nil && n.resumed.has(id, now)
}

// handle registers fn for authentic bus messages of type t (used by the key
// rotation protocol); a nil fn unregisters.
func (n *Node) handle(t envType, fn func(header, []byte)) {
	n.handlersMu.Lock()
	if fn == nil {
		delete(n.handlers, t)
	} else {
		n.handlers[t] = fn
	}
	n.handlersMu.Unlock()
}
