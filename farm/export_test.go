package farm

import (
	"context"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// Revoke is revoke, for the tests: it revokes without waiting.
func (n *Node) Revoke(ctx context.Context, id session.ID) (bool, error) { return n.revoke(ctx, id) }

// PendingRevocations is pendingRevocations, for the tests.
func (n *Node) PendingRevocations() int { return n.pendingRevocations() }

// RevocationsApplied returns how many revoked chains the node's revoker
// has applied farm-wide (written to the store and published) since it
// joined: once each, if it queued each once.
func (n *Node) RevocationsApplied() uint64 {
	n.revs.mu.Lock()
	defer n.revs.mu.Unlock()
	return n.revs.applied
}

// FallbackState is fallbackState, for the tests.
func (n *Node) FallbackState() (on bool, episodes uint64) { return n.fallbackState() }

// LookupWaiters reports how many handshakes wait for a store lookup now
// (joined to one, whoever started it).
func (n *Node) LookupWaiters() int64 { return n.lk.waiting.Load() }

// RejectedTotal is rejectedTotal (metrics_internal_test.go), for the
// external tests.
var RejectedTotal = rejectedTotal

// HoldsPending reports whether the node holds the session id as received
// from a peer (lazy peers), not yet decoded.
func (n *Node) HoldsPending(id session.ID) bool {
	if n.pend == nil {
		return false
	}
	n.pend.mu.Lock()
	defer n.pend.mu.Unlock()
	_, ok := n.pend.m[id]
	return ok
}

// SetReconcilePage sets the number of records a reconcile reads at a time.
func (n *Node) SetReconcilePage(size int) { n.recon.page.Store(int32(size)) }

// StoreGeneration returns the store's generation record as the node last
// read it, or nil.
func (n *Node) StoreGeneration() []byte { return n.storeGeneration() }

// LoadFromStore loads the session id from the store into the node's cache,
// as the cache does for a handshake that presents an ID it does not hold
// (session.Farm.Load, then an insert with OriginLoader), but without a
// handshake, which would cut the session to its grace. It reports whether
// the session is cached.
func (n *Node) LoadFromStore(ctx context.Context, id session.ID) bool {
	rec, err := cachePeer{n}.Load(ctx, id)
	if err != nil || rec == nil {
		return false
	}
	if rec.ChainStart.IsZero() {
		rec.ChainStart = n.cfg.Now()
	}
	return n.cfg.Cache.Insert(id, *rec, session.OriginLoader) == nil
}

// HoldRetired retires id here and makes the node hold the retirement, as
// if it had kept it after a failed write (see holdLife, restoreLife),
// without writing or publishing it.
func (n *Node) HoldRetired(id session.ID) {
	now := n.cfg.Now()
	n.retired.add(id, now)
	n.cfg.Cache.Retire(id, session.OriginPeer)
	n.holdLife([]item{{id: id, op: opRetire, expires: now.Add(time.Hour)}}, now)
}

// AskResend asks the node to request its peers to re-send what they hold
// (msgResend), as busUp and writeBack do.
func (n *Node) AskResend() { n.wantResendAsk() }

// HoldCut cuts id here to end at until and makes the node hold the cut, as
// HoldRetired does a retirement, without writing or publishing it.
func (n *Node) HoldCut(id session.ID, until time.Time) {
	now := n.cfg.Now()
	n.cfg.Cache.Cut(id, until)
	n.holdLife([]item{{id: id, op: opCut, until: until, expires: now.Add(time.Hour)}}, now)
}

// EnvTypeCut is the type byte of a cut message (msgCut: retirements and
// grace cuts), EnvTypeKeys that of a key announcement (msgKeys), EnvTypeSess
// that of a message of new sessions (msgSessions), EnvTypeRev that of a
// revocation (msgRevoke), EnvTypeTally that of a tally (msgTally), at offset
// EnvTypeAt of an envelope; EnvSealedAt is the offset of its 8-byte sealing
// time (Unix µs), EnvSenderAt that of its 8-byte sender instance ID.
const (
	EnvTypeCut   = byte(msgCut)
	EnvTypeKeys  = byte(msgKeys)
	EnvTypeSess  = byte(msgSessions)
	EnvTypeRev   = byte(msgRevoke)
	EnvTypeTally = byte(msgTally)
	EnvTypeAt    = 3
	EnvSealedAt  = 5
	EnvSenderAt  = 13
)

// Instance returns the node's instance ID, as its messages carry it.
func (n *Node) Instance() uint64 { return n.instance }

// PublishNoise publishes k authentic, empty session messages in one
// batch, counted for the tallies as every message the node publishes.
func (n *Node) PublishNoise(ctx context.Context, k int) error {
	msgs := make([][]byte, k)
	for i := range msgs {
		msgs[i] = n.keys.seal(nil, header{typ: msgSessions, time: n.cfg.Now(), sender: n.instance, farm: n.cfg.Farm}, nil, nil)
	}
	return n.publish(ctx, msgs...)
}

// BusUp reports whether the node's bus subscription says it is up (the
// bus's own state, without the health probes).
func (n *Node) BusUp() bool { return n.connected.Load() }

// StoreFailing reports whether the node's last store write failed.
func (n *Node) StoreFailing() bool {
	n.deg.mu.Lock()
	defer n.deg.mu.Unlock()
	return n.deg.storeFailing
}

// QueueRevocations queues count revocations, of the chains first to
// first+count-1, lapsing at until, as RevokeSession queues one for a
// session the node does not hold.
func (n *Node) QueueRevocations(first uint64, count int, until time.Time) {
	for i := range count {
		n.addRevocation(session.ID{}, revocation{chain: first + uint64(i), until: until})
	}
}

// FillSent keeps k made-up retirements and grace cuts (half each, of
// sessions no node holds) in the node's ring of those it sent, as a node
// that retired and cut k sessions in the last Lifetime would: its next
// re-send sends them all again.
func (n *Node) FillSent(k int) {
	now := n.cfg.Now()
	for i := range k {
		it := item{id: n.cfg.Cache.NewID(), op: opRetire}
		if i%2 == 1 {
			it.op, it.until = opCut, now.Add(time.Minute)
		}
		n.keepSent(it)
	}
	// Settled long ago, as a busy node's would be (see unsettled).
	n.settled.mark(n.sent.count(), time.Time{})
}

// TombstoneKey is the Coordinator's key of the farm's revocations.
const TombstoneKey = tombstoneKey

// ChainMarkPrefix begins the keys of the hit gate's revoked-chain marks.
const ChainMarkPrefix = chainMarkPrefix

// IDMarkPrefix begins the keys of the hit gate's revoked-ID marks.
const IDMarkPrefix = revokedIDMarkPrefix

// SealTombstone returns a revocation of chain until until, sealed as the
// node writes one into the Coordinator's set of revocations.
func (n *Node) SealTombstone(chain uint64, until time.Time) []byte {
	hdr := header{typ: valTombstone, time: n.cfg.Now(), sender: n.instance, farm: n.cfg.Farm}
	return n.keys.seal(nil, hdr, appendRevocations(nil, []revocation{{chain: chain, until: until}}), nil)
}

// RevocationJournalHook makes the node call f before each write to the
// pending revocations journal (a test slows the writes down, or holds
// them, so that its kill finds revocations waiting for one).
func (n *Node) RevocationJournalHook(f func()) {
	n.revs.mu.Lock()
	n.revs.writeHook = f
	n.revs.mu.Unlock()
}

// HoldTallyTick makes the node's tallier call f on each tick, with its
// context, before it sends the tick's tally.
func (n *Node) HoldTallyTick(f func(ctx context.Context)) { n.tly.tickHook.Store(&f) }

// LongFlushWindow sets cfg.FlushWindow to d past the bound Join puts on
// it, for the tests that need a window long enough to tell apart from
// the delays of a loaded machine.
func LongFlushWindow(cfg *Config, d time.Duration) { cfg.FlushWindow, cfg.longWindow = d, true }

// HitsCurrent is hitsCurrent, for the tests and benchmarks.
func (n *Node) HitsCurrent() bool { return n.hitsCurrent() }

// StoreProbeAnswered returns the number (among those begun) of the last
// store probe begun that was answered: it grows as later probes answer.
func (n *Node) StoreProbeAnswered() uint64 { return n.storeProbe.lastAnswered.Load() }

// StoreProbeFailed returns the number (among those begun) of the last
// store probe begun that failed: it grows as later probes fail.
func (n *Node) StoreProbeFailed() uint64 { return n.storeProbe.lastFailed.Load() }

// StoreProbeUp reports whether the node's last store probe was answered.
func (n *Node) StoreProbeUp() bool { return n.storeProbe.healthy() }

// StoreProbeInFlight reports whether a probe of the node's store is in
// flight.
func (n *Node) StoreProbeInFlight() bool {
	pr := n.storeProbe
	return max(pr.lastFailed.Load(), pr.lastAnswered.Load()) < pr.begun.Load()
}

// StoreProbesBegun returns the number of the node's store probes begun.
func (n *Node) StoreProbesBegun() uint64 { return n.storeProbe.begunCount() }

// RecheckSpacing is recheckSpacing, for the tests.
const RecheckSpacing = recheckSpacing

// ReadsGeneration reports whether the node reads the store's generation
// record (see checkGeneration): it has a record store that keeps one.
func (n *Node) ReadsGeneration() bool { return n.cfg.Records != nil && n.keepsGeneration() }

// Steps returns how many steps of its loop the rotator has begun and how
// many have ended; they run one at a time.
func (r *Rotator) Steps() (begun, ended uint64) {
	return r.stepsBegun.Load(), r.stepsEnded.Load()
}

// Refilling reports whether the node found the store's data lost and has
// not written its sessions back yet (see retryWriteBack).
func (n *Node) Refilling() bool { return n.refilling.Load() }

// ReconcileState returns how many bus gaps the node has settled with a
// store (see settleGap), and whether a reconcile of one is still to come
// or to end.
func (n *Node) ReconcileState() (gaps uint64, pending bool) {
	r := &n.recon
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.gen, !r.since.IsZero()
}

// HoldProber makes the node's prober call hold before each probe it
// begins (nil: no longer), as a loaded machine may hold it back.
func (n *Node) HoldProber(hold func(ctx context.Context)) {
	if hold == nil {
		n.proberHold.Store(nil)
		return
	}
	n.proberHold.Store(&hold)
}
