package farm

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/session"
)

// The hit gate. A revocation reaches a node by its bus; RevokeSession
// reports it applied once the store holds it and the bus carried it, and
// MaxDeliveryLag later on a bus that marks its delivery. A node whose
// delivery lags further (a slow consumer, a reader held up, TCP
// backpressure) or whose subscription is down while its store is up has
// not heard of it, and would resume a session of the revoked chain that it
// holds (its own, a peer's broadcast copy) until the message came. So while
// the node's delivery is not current (its mark older than MaxDeliveryLag,
// or zero), a session the cache finds, or the farm loads for it, resumes
// only once the store confirms that its chain is not revoked: every
// revocation leaves a mark keyed by its chain in the store (chainMark)
// before it counts as stored, and the gate reads it, with the mark a
// revocation by ID leaves (revokedIDMarkKey). Nor has such a node heard of
// a retirement (single use, Cache.Retire) or a grace cut made elsewhere,
// which reach the store too: so the gate also reads the session's record,
// and refuses one deleted, or cut to the past (see gateRecord). After a gap in the
// subscription the mark is current at once, but what was published during
// the gap is not delivered: the gate stays on until the node's heal has
// read the store's tombstones and revocations by ID since (see gapOpen).
// While delivery is current (the normal case), a hit costs an atomic load
// or two and a clock read.
//
// A read that fails or does not answer within LookupTimeout refuses the
// resumption (a full handshake) while the node reaches the farm by either
// path: a slow store, or a path to it that drops one read, must not let a
// revoked session through. While the node's probe of its store goes
// unanswered (a store outage, or this node cut off from it), and so does
// a probe the hit begins at once (or, if it begins none because one is in
// flight or began a moment ago, the last probe that ended: see
// probe.recheck; a store back from an outage answers the hit's read
// before the next ProbeInterval's probe), when the
// read itself, and two more at once, find the store's server
// unreachable (connection refused or lost, not a timeout: a lost
// connection alone is not the store gone), or the read goes unanswered
// (see unanswered) while the node's writes go unanswered too or its bus
// is down (its subscription not up, or its probe unanswered: one server
// serving both has gone, say), the gate lets its sessions resume unchecked, as fallback
// tickets issued meanwhile resume on any node: the farm can apply no
// revocation while its store is down, and a node cut off from the farm is
// not held to what the farm says meanwhile (see docs/farm.md). A store
// that answers, if only to refuse (a write or the read itself refused:
// nats-server's "JetStream system temporarily unavailable" while a stream
// elects its leader, a permission taken away), is there: the node reaches
// it, and the gate holds it to the marks (TestGateStoreRefusalIsNoCutOff).
// Nor does a write that went unanswered skip the read: one lost in a
// route that froze and thawed fails after the store is back.

// chainMarkPrefix begins the key of a revoked chain's mark in the record
// store (see chainMark).
const chainMarkPrefix = "rc:"

// chainMarkKey returns the key of the mark a revocation of chain leaves in
// the store.
func chainMarkKey(chain uint64) string {
	var c [8]byte
	binary.BigEndian.PutUint64(c[:], chain)
	return chainMarkPrefix + hex.EncodeToString(c[:])
}

// chainMark returns the mark a revocation rev leaves in the store, sealed
// under hdr's time and bound to its chain: the chain and its end (the
// revocation's body). It lasts as long as the revocation, or as long as a
// session issued by then can live (the cache's Lifetime, and MaxSkew for
// the issuer's clock), if that ends first: the gate asks about sessions a
// node holds without having heard of the revocation, and those were issued
// before it; the tombstone keeps the chain revoked for the rest of its
// life. A mark kept for the chain's whole life (MaxChainLifetime) would
// outlive every session record, and raise the age limit of a store that
// drops records by age (NATS before 2.11) for all of them. It reports
// false if rev is over.
func (n *Node) chainMark(hdr header, rev revocation) (transport.Item, bool) {
	end := rev.until
	if life := hdr.time.Add(n.cfg.Cache.Config().Lifetime + n.cfg.MaxSkew); life.Before(end) {
		end = life
	}
	ttl := end.Sub(hdr.time)
	if ttl <= 0 {
		return transport.Item{}, false
	}
	var c [8]byte
	binary.BigEndian.PutUint64(c[:], rev.chain)
	hdr.typ = valChainRevoked
	body := appendRevocations(nil, []revocation{{chain: rev.chain, until: rev.until}})
	return transport.Item{Key: chainMarkKey(rev.chain), Value: n.keys.seal(nil, hdr, body, c[:]), TTL: ttl}, true
}

// hitsCurrent reports whether a session the cache holds resumes without
// asking the store: the gate is off (no store, or a bus that does not mark
// its delivery), or the bus has delivered everything published until
// MaxDeliveryLag ago and the node has no gap left to heal (see gapState).
// With a cache whose ResumeGrace, less FlushWindow, is shorter than
// MaxDeliveryLag, that is the bound: a peer's grace cut of a session is
// published within FlushWindow of the resumption and ends the session a
// grace after it, so a node whose delivery lags by less than the grace
// less the window has heard of every cut that has taken effect, and one
// lagging further asks the store, which holds the cut (see gateRecord).
func (n *Node) hitsCurrent() bool {
	if n.hitMarker == nil {
		return true
	}
	if n.gap.Load()&gapOpen != 0 {
		return false
	}
	t := n.markedThrough(n.hitMarker)
	return !t.IsZero() && time.Since(t) <= n.hitLag
}

// hitLag returns how far behind the present a node's bus delivery may be
// for its hits to resume without asking the store (see hitsCurrent): the
// farm's MaxDeliveryLag, or the cache's ResumeGrace less the publisher's
// FlushWindow if the cache cuts resumed sessions (a positive grace) and
// that is shorter.
func hitLag(maxDeliveryLag, resumeGrace, flushWindow time.Duration) time.Duration {
	if resumeGrace <= 0 {
		return maxDeliveryLag
	}
	return min(maxDeliveryLag, resumeGrace-flushWindow)
}

// A gap in the node's subscription (down, or messages dropped with it up)
// loses the messages published meanwhile, and the bus's delivery mark says
// nothing of them: it is current again as soon as the subscription is
// back. The revocations among them (their tombstones, the revocations by
// ID) reach the node only when its heal reads the store's sets. So a gap
// opens the hit gate until the healer has read both, in full, in a heal
// that began with the subscription up after it (see healer): n.gap holds
// the gaps counted so far, shifted left by one, and gapOpen while the last
// one is not healed. A hit then costs the same one atomic load (n.gap's,
// beside the mark's) while nothing is open.
const gapOpen = 1

// openGap notes a gap in the node's subscription. It is called after the
// node counts its subscription down (n.connected false), so that a heal
// that finds it open and the subscription up began after it ended.
func (n *Node) openGap() {
	for {
		old := n.gap.Load()
		if n.gap.CompareAndSwap(old, (old>>1+1)<<1|gapOpen) {
			return
		}
	}
}

// healStart returns the gap state as a heal beginning now finds it, and
// whether the heal can close it: the subscription is up.
func (n *Node) healStart() (uint64, bool) {
	g := n.gap.Load()
	return g, n.connected.Load()
}

// closeGap closes the gap g, which a heal found at its start (healStart)
// and has since read the store's tombstones and revocations by ID in
// full, unless another gap opened meanwhile.
func (n *Node) closeGap(g uint64) {
	if g&gapOpen != 0 {
		n.gap.CompareAndSwap(g, g&^gapOpen)
	}
}

// revokedIDMarkPrefix begins the key of the mark a revocation by ID
// leaves in the record store (see revokedIDMarkKey).
const revokedIDMarkPrefix = "ri:"

// revokedIDMarkKey returns the key of the mark a revocation of the session
// id by ID leaves in the record store, beside its member of revokedIDsKey's
// set (the same sealed value), for the hit gate to read with the chain's
// mark.
func revokedIDMarkKey(id session.ID) string {
	return revokedIDMarkPrefix + hex.EncodeToString(id[:])
}

// HitsCurrent implements session.HitChecker for the node's cache (see
// Node.hitsCurrent).
func (p cachePeer) HitsCurrent() bool { return p.n.hitsCurrent() }

// CheckHit implements session.HitChecker for the node's cache (see
// Node.checkHit).
func (p cachePeer) CheckHit(ctx context.Context, id session.ID, chain uint64) bool {
	return p.n.checkHit(ctx, id, chain)
}

// checkHit reports whether the session id of chain, which the node's cache
// holds, may resume on this node while its delivery is not current (see
// gateHit, reading the session's record too).
func (n *Node) checkHit(ctx context.Context, id session.ID, chain uint64) bool {
	ok, _ := n.gateHit(ctx, id, chain, true)
	return ok
}

// gateHit reports whether the session id of chain may resume on this
// node while its delivery is not current: the store holds no mark of a
// revocation of the chain (see chainMark), nor of the session by ID (see
// revokedIDMarkKey), and, if withRecord, the session's record says it is
// still live (see gateRecord: a retirement or a grace cut made elsewhere
// is not heard of either), read in one round trip where the record store
// is a transport.RecordGetter. It also returns the record's end, if it
// read one that opens (zero otherwise): a session whose copy ends later
// is cut to it. A mark found is applied at once. A read that
// fails, does not answer before ctx ends or finds a mark that does not
// open refuses the session, unless the node's probe of its store goes
// unanswered and so does one the hit begins at once (or the last that
// ended, if it begins none: see probe.recheck; then nothing is read), the read and those made again at
// once found the store's server unreachable (see unreachable,
// hitReadsAgain), or the read went unanswered (see unanswered) while the
// node counts its store unreachable (storeUnreachable) or its bus down
// (busUnreachable). Counted in tlsfarm_farm_gated_hits_total.
func (n *Node) gateHit(ctx context.Context, id session.ID, chain uint64, withRecord bool) (bool, time.Time) {
	if n.cfg.Records == nil {
		return true, time.Time{}
	}
	// Back from a gap not yet healed, the node's probes may still
	// describe the gap: unless a probe of its store begun since the
	// subscription came back has failed (one begun before may fail
	// after), the read says whether the store is there.
	healing := n.healing()
	probeFailed := n.storeProbe.failedSince(n.upProbeBegun.Load())
	if (!healing || probeFailed) && !n.storeProbe.healthy() && !n.storeProbe.recheck(ctx) {
		// The store's probe failed, and one begun now failed too, or
		// did not answer in time, or none could begin and the last
		// that ended failed: the node is cut off from its store. (Not the next ProbeInterval's
		// probe: a store that is back answers this hit's read.)
		n.ctr.gated[gateCutOff].Add(1)
		return true, time.Time{}
	}
	busDown := n.busUnreachable() // as the hit found it
	rd, err := n.readHitMarks(ctx, id, chain, withRecord)
	for again := 0; err != nil && again < hitReadsAgain && unreachable(err) && ctx.Err() == nil; again++ {
		// Again: the read's connection may have been lost alone, or
		// with the others a pool held (the server or a path dropped
		// them), with the store there on a new one. A store that is
		// gone refuses these too, at once.
		rd, err = n.readHitMarks(ctx, id, chain, withRecord)
	}
	if err != nil {
		// A read the store answered, if with a refusal, found it
		// there: whatever the node's writes or its bus found, it
		// reaches the farm, and the session waits for an answer.
		silent := unanswered(err)
		cutOff := unreachable(err) || silent && (busDown || n.storeUnreachable() || n.busUnreachable())
		if healing {
			cutOff = unreachable(err) || silent && (n.subscriptionDown() ||
				n.storeProbe.failedSince(n.upProbeBegun.Load()) && n.storeUnreachable())
		}
		if cutOff {
			// The store's server cannot be reached (the connection
			// refused, or lost), or was found unreachable while this
			// read waited; or the bus is down too: the node reaches
			// neither path to the farm (one server that serves both
			// has gone, say). Not a read that timed out alone: a slow
			// store is there.
			n.ctr.gated[gateCutOff].Add(1)
			return true, time.Time{}
		}
		n.ctr.gated[gateStoreError].Add(1)
		return false, time.Time{}
	}
	now := n.cfg.Now()
	if rd.chainMark == nil && rd.idMark == nil {
		if !withRecord {
			n.ctr.gated[gateConfirmed].Add(1)
			return true, time.Time{}
		}
		own := false // the session is this node's, waiting for its store write
		if rd.record == nil {
			if _, own = n.unstoredIDs()[id]; !own {
				// This node's own new session, written since the read
				// (no longer queued, nor in flight), is in the store
				// now: read it once more before calling it retired. (CI:
				// a chain of resumptions on its issuer, delivery lagging
				// under load, was refused at its fourth.)
				if v, err := n.cfg.Records.GetRecord(transport.PrimaryRead(ctx), sessionKey(id)); err == nil {
					rd.record = v
				}
			}
		}
		r, end := n.gateRecord(id, rd, own, now)
		n.ctr.gated[r].Add(1)
		return r == gateConfirmed, end
	}
	bad := false
	if cm := rd.chainMark; cm != nil {
		var c [8]byte
		binary.BigEndian.PutUint64(c[:], chain)
		_, body, err := n.keys.open(cm, n.cfg.Farm, valChainRevoked, c[:], now, 0, n.cfg.MaxSkew)
		var revs []revocation
		if err == nil {
			revs, err = parseRevocations(body)
		}
		if err != nil || len(revs) != 1 || revs[0].chain != chain {
			bad = true
		} else {
			n.cfg.Cache.RemoveChain(chain, revs[0].until, session.OriginPeer)
		}
	}
	if im := rd.idMark; im != nil {
		_, body, err := n.keys.open(im, n.cfg.Farm, valRevokedID, nil, now, 0, n.cfg.MaxSkew)
		var rs []revokedID
		if err == nil {
			rs, err = parseRevokedIDs(body)
		}
		if err != nil || len(rs) != 1 || rs[0].id != id {
			bad = true
		} else {
			// Recorded here, and the session's chain revoked if the
			// cache holds it (gateLoaded revokes a loaded one's).
			n.learnRevokedIDs(rs)
		}
	}
	if bad {
		n.ctr.storeRejected.Add(1)
		n.ctr.gated[gateStoreError].Add(1)
		return false, time.Time{}
	}
	n.ctr.gated[gateRevoked].Add(1)
	return false, time.Time{}
}

// gateRecord returns what the session's record, as the gate read it
// with no revocation mark (rd), makes of a gated hit on the session id at
// now: gateConfirmed (it resumes), gateRetired or gateStoreError (it does
// not), and the record's end if it opened. A node whose delivery lags
// has not heard of a retirement or a grace cut made elsewhere either, and
// both reach the store: a retirement (a single use's take among them)
// deletes the record, a grace cut rewrites it to end earlier.
//
// A record that ends earlier than the cache's copy cuts the copy, which
// resumes only while that end is ahead. One that does not open is a store
// error, as a mark that does not open is.
//
// A record that is missing was deleted, or lost, or not written yet, and
// only a deletion retires the session: as a reconcile does (see
// reconcilePage), the gate refuses it only if it is not this node's own
// session waiting for its store write (own, from unstoredIDs), and the store has not
// lost its data since the node last read its generation (the generation
// record, read after the session's, is the one the node holds, and the
// node is not writing its sessions back: see checkGeneration). A record
// lost with the store's data is the write-back's to restore (the node's
// own sessions, and the peers' it holds); the hit resumes meanwhile, as
// it did before the gate read records (a 0-RTT replay then still meets
// the strike register's loss, proxy TestEarlyDataRefusedAfterStoreLoss).
// A peer's session that its issuer has yet to write is refused: a full
// handshake, never a resumption the farm retired. The session stays in
// the cache: its retirement's message is on its way, and one read is not
// the two a reconcile makes before it retires a session.
func (n *Node) gateRecord(id session.ID, rd hitRead, own bool, now time.Time) (int, time.Time) {
	if rd.record == nil {
		if own {
			return gateConfirmed, time.Time{}
		}
		if n.keepsGeneration() && (n.refilling.Load() || rd.generation == nil ||
			!bytes.Equal(rd.generation, n.storeGeneration())) {
			// Lost with the store's data, or it may have been.
			return gateConfirmed, time.Time{}
		}
		return gateRetired, time.Time{}
	}
	_, body, err := n.keys.open(rd.record, n.cfg.Farm, valRecord, id[:], now, 0, n.cfg.MaxSkew)
	var r session.Record
	if err == nil {
		err = r.UnmarshalBinary(body)
	}
	clear(body) // the session's state: only its end is wanted here
	if err != nil {
		n.ctr.storeRejected.Add(1)
		return gateStoreError, time.Time{}
	}
	end := r.Expires
	if cut, ok := n.cfg.Cache.Cut(id, end); ok && cut.Expires.Equal(end) {
		n.noteLoaded(id, end)
	}
	if !end.After(now) {
		return gateRetired, end
	}
	return gateConfirmed, end
}

// hitReadsAgain is how many times more checkHit reads the marks after a
// read that found the store's server unreachable, before it counts the
// node cut off: a connection lost alone, or a pool's connections lost
// together (a path or the server dropped them), is not the store gone,
// and a store that is gone refuses each at once.
const hitReadsAgain = 2

// A hitRead is what the hit gate read for a session (see readHitMarks),
// nil where the store holds nothing.
type hitRead struct {
	chainMark, idMark []byte // the revocation marks: of its chain, of its ID
	record            []byte // its record, if read (withRecord, no mark)
	generation        []byte // the store's generation, read after a record found missing
}

// readHitMarks reads the marks the hit gate checks for the session id of
// chain: its chain's revocation (chainMarkKey) and its revocation by ID
// (revokedIDMarkKey), nil where there is none; and, if withRecord, its
// record (sessionKey), in the same round trip where the record store is
// a transport.RecordGetter. With one that is not, it reads them at once,
// one request a key. A record found missing
// with no mark there is followed by a read of the store's generation
// record (generationKey), where the store keeps one (keepsGeneration), to
// tell a deletion from a loss (see gateRecord). All are read from the
// store's primary (transport.PrimaryRead).
func (n *Node) readHitMarks(ctx context.Context, id session.ID, chain uint64, withRecord bool) (hitRead, error) {
	// From the primary: a replica cut off from its master answers "no
	// mark" for as long as the cut lasts, and the hit resumed a session
	// revoked on another node, reported applied
	// (TestClusterReadOnlyGateReadsMaster).
	ctx = transport.PrimaryRead(ctx)
	var rd hitRead
	keys := [3]string{chainMarkKey(chain), revokedIDMarkKey(id)}
	nk := 2
	if withRecord {
		keys[2] = sessionKey(id)
		nk = 3
	}
	if g, ok := n.cfg.Records.(transport.RecordGetter); ok {
		vs, err := g.GetRecords(ctx, keys[:nk]...)
		if err != nil {
			return hitRead{}, err
		}
		if len(vs) != nk {
			return hitRead{}, errors.New("farm: the record store answered a read of the hit gate's keys with a count of values other than theirs")
		}
		rd.chainMark, rd.idMark = vs[0], vs[1]
		if withRecord {
			rd.record = vs[2]
		}
	} else {
		vs, err := n.readEach(ctx, keys[:nk])
		if err != nil {
			return hitRead{}, err
		}
		rd.chainMark, rd.idMark, rd.record = vs[0], vs[1], vs[2]
	}
	if withRecord && rd.chainMark == nil && rd.idMark == nil && rd.record == nil && n.keepsGeneration() {
		// After the record's read: a loss before it shows here.
		v, err := n.cfg.Records.GetRecord(ctx, generationKey)
		switch {
		case errors.Is(err, transport.ErrNotFound):
		case err != nil:
			return hitRead{}, err
		default:
			rd.generation = v
		}
	}
	return rd, nil
}

// readEach reads keys (at most three) from the record store one request
// a key, all at once: a gated hit waits one round trip, not three (a NATS
// leader's gets are one key each; most gated hits find no mark and a
// record, and would read all three in turn). It returns the values in
// the order of keys, nil where a key has none, or the first key's error.
func (n *Node) readEach(ctx context.Context, keys []string) ([3][]byte, error) {
	var vs [3][]byte
	var errs [3]error
	var wg sync.WaitGroup
	for i, k := range keys {
		wg.Go(func() {
			vs[i], errs[i] = n.cfg.Records.GetRecord(ctx, k)
			if errors.Is(errs[i], transport.ErrNotFound) {
				vs[i], errs[i] = nil, nil
			}
		})
	}
	wg.Wait()
	for _, err := range errs[:len(keys)] {
		if err != nil {
			return [3][]byte{}, err // as a read in turn would have failed
		}
	}
	return vs, nil
}

// gateLoaded returns rec, which the farm found for the session id (a
// peer's copy held undecoded, one that came while a handshake waited, or
// the store's record, which stored says), or nil if the hit gate holds it
// back: the store's record of a session is there until its own
// revocation deletes it, not its chain's. A record that did not come from
// the store is checked against the store's (see gateRecord), and ends no
// later than it; one that did is not read again (a lookup that several
// handshakes share reads the store once). A session the gate finds
// revoked by ID has its chain revoked (see refuseRevokedID).
func (n *Node) gateLoaded(ctx context.Context, id session.ID, rec *session.Record, stored bool) *session.Record {
	if rec == nil || n.hitsCurrent() {
		return rec
	}
	ok, end := n.gateHit(ctx, id, rec.Chain, !stored)
	if !ok {
		n.refuseRevokedID(id, rec)
		return nil
	}
	if !end.IsZero() && end.Before(rec.Expires) {
		cp := *rec
		cp.Expires = end
		rec = &cp
	}
	return rec
}

// unreachable reports whether err, a store request's, says its server
// could not be reached: a connection refused, reset or closed, or none
// to send it on (transport.ErrNotConnected), not a timeout nor an answer.
func unreachable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) && !ne.Timeout() {
		return true
	}
	return errors.Is(err, transport.ErrNotConnected) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed)
}

// storeUnreachable reports whether the node counts its store unreachable:
// its health probe goes unanswered, or its last write did (see
// unanswered). A write the store refused does not count: the store
// answered it.
func (n *Node) storeUnreachable() bool {
	if !n.storeProbe.healthy() {
		return true
	}
	n.deg.mu.Lock()
	silent := n.deg.storeSilent
	n.deg.mu.Unlock()
	return silent
}

// unanswered reports whether err, a store request's, came without an
// answer from the store: its server could not be reached (see
// unreachable), or did not answer in time (the request's deadline
// passed, or its connection's). An error the store answered with (a
// refusal: a permission, nats-server's "temporarily unavailable" while a
// stream elects its leader) is not: the store is there.
func unanswered(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) || unreachable(err) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// subscriptionDown reports whether the node's subscription is not up
// (unmarked, or reported down).
func (n *Node) subscriptionDown() bool {
	return (n.hitMarker != nil && n.hitMarker.DeliveredThrough().IsZero()) || !n.connected.Load()
}

// healing reports whether the node's subscription is up after a gap that
// its heal has not yet read the store for (see gapOpen).
func (n *Node) healing() bool {
	return n.gap.Load()&gapOpen != 0 && !n.subscriptionDown()
}

// busUnreachable reports whether the node's bus is down by its own
// account: its subscription is not up (unmarked, or reported down), or its
// health probe goes unanswered.
func (n *Node) busUnreachable() bool {
	return n.subscriptionDown() || !n.busProbe.healthy()
}

// What the hit gate found, as tlsfarm_farm_gated_hits_total labels it.
const (
	gateConfirmed  = iota // the store holds no revocation of the chain, and the session's record (or lost it with its data): resumed
	gateRevoked           // the store holds one: applied, not resumed
	gateStoreError        // the store's read failed or did not answer in time: not resumed
	gateCutOff            // the node counts its store unreachable: resumed unchecked
	gateRetired           // the store deleted the session's record, or holds it cut to the past: not resumed
	numGateResults
)

var gateResults = []string{"confirmed", "revoked", "store_error", "cut_off", "retired"}
