package farm

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"net"
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
// before it counts as stored, and the gate reads it. While delivery is
// current (the normal case), a hit costs an atomic load and a clock read.
//
// A read that fails or does not answer within LookupTimeout refuses the
// resumption (a full handshake) while the node reaches the farm by either
// path: a slow store, or a path to it that drops one read, must not let a
// revoked session through. While the node counts its store unreachable
// (its probe unanswered, its writes failing: a store outage, or this node
// cut off from it), when the read itself finds the store's server
// unreachable (connection refused or lost, not a timeout), or the read
// fails while its bus is down too (its
// subscription not up, or its probe unanswered: one server serving both
// has gone, say), the gate lets its sessions resume unchecked, as fallback
// tickets issued meanwhile resume on any node: the farm can apply no
// revocation while its store is down, and a node cut off from the farm is
// not held to what the farm says meanwhile (see docs/farm.md).

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
// MaxDeliveryLag ago.
func (n *Node) hitsCurrent() bool {
	if n.hitMarker == nil {
		return true
	}
	t := n.hitMarker.DeliveredThrough()
	return !t.IsZero() && time.Since(t) <= n.cfg.MaxDeliveryLag
}

// HitsCurrent implements session.HitChecker for the node's cache (see
// Node.hitsCurrent).
func (p cachePeer) HitsCurrent() bool { return p.n.hitsCurrent() }

// CheckHit implements session.HitChecker for the node's cache (see
// Node.checkHit).
func (p cachePeer) CheckHit(ctx context.Context, id session.ID, chain uint64) bool {
	return p.n.checkHit(ctx, chain)
}

// checkHit reports whether a session of chain may resume on this node
// while its delivery is not current: the store holds no mark of a
// revocation of the chain (see chainMark). A mark found is applied to the
// cache at once. A read that fails, does not answer before ctx ends or
// finds a mark that does not open refuses the session, unless the read
// found the store's server unreachable (see unreachable), the node counts
// its store unreachable (storeUnreachable), or the read failed while its
// bus is down too (busUnreachable). Counted in
// tlsfarm_farm_gated_hits_total.
func (n *Node) checkHit(ctx context.Context, chain uint64) bool {
	if n.cfg.Records == nil {
		return true
	}
	if n.storeUnreachable() {
		n.ctr.gated[gateCutOff].Add(1)
		return true
	}
	busDown := n.busUnreachable() // as the hit found it
	v, err := n.cfg.Records.GetRecord(ctx, chainMarkKey(chain))
	if errors.Is(err, transport.ErrNotFound) {
		n.ctr.gated[gateConfirmed].Add(1)
		return true
	}
	if err != nil {
		if busDown || unreachable(err) || n.storeUnreachable() || n.busUnreachable() {
			// The store's server cannot be reached (the connection
			// refused, or lost), or was found unreachable while this
			// read waited; or the bus is down too: the node reaches
			// neither path to the farm (one server that serves both
			// has gone, say). Not a read that timed out alone: a slow
			// store is there.
			n.ctr.gated[gateCutOff].Add(1)
			return true
		}
		n.ctr.gated[gateStoreError].Add(1)
		return false
	}
	var c [8]byte
	binary.BigEndian.PutUint64(c[:], chain)
	_, body, err := n.keys.open(v, n.cfg.Farm, valChainRevoked, c[:], n.cfg.Now(), 0, n.cfg.MaxSkew)
	var revs []revocation
	if err == nil {
		revs, err = parseRevocations(body)
	}
	if err != nil || len(revs) != 1 || revs[0].chain != chain {
		n.ctr.storeRejected.Add(1)
		n.ctr.gated[gateStoreError].Add(1)
		return false
	}
	n.cfg.Cache.RemoveChain(chain, revs[0].until, session.OriginPeer)
	n.ctr.gated[gateRevoked].Add(1)
	return false
}

// gateLoaded returns rec, which the farm found for the session id (a
// peer's copy held undecoded, one that came while a handshake waited, or
// the store's record), or nil if the hit gate holds it back: the store's
// record of a session is there until its own revocation deletes it, not
// its chain's.
func (n *Node) gateLoaded(ctx context.Context, rec *session.Record) *session.Record {
	if rec == nil || n.hitsCurrent() || n.checkHit(ctx, rec.Chain) {
		return rec
	}
	return nil
}

// unreachable reports whether err, a store request's, says its server
// could not be reached: a connection refused, reset or closed, not a
// timeout nor an answer.
func unreachable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) && !ne.Timeout() {
		return true
	}
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed)
}

// storeUnreachable reports whether the node counts its store unreachable:
// its health probe goes unanswered, or its writes fail.
func (n *Node) storeUnreachable() bool {
	if !n.storeProbe.healthy() {
		return true
	}
	n.deg.mu.Lock()
	failing := n.deg.storeFailing
	n.deg.mu.Unlock()
	return failing
}

// busUnreachable reports whether the node's bus is down by its own
// account: its subscription is not up (unmarked, or reported down), or its
// health probe goes unanswered.
func (n *Node) busUnreachable() bool {
	if n.hitMarker != nil && n.hitMarker.DeliveredThrough().IsZero() {
		return true
	}
	return !n.connected.Load() || !n.busProbe.healthy()
}

// What the hit gate found, as tlsfarm_farm_gated_hits_total labels it.
const (
	gateConfirmed  = iota // the store holds no revocation of the chain: resumed
	gateRevoked           // the store holds one: applied, not resumed
	gateStoreError        // the store's read failed or did not answer in time: not resumed
	gateCutOff            // the node counts its store unreachable: resumed unchecked
	numGateResults
)

var gateResults = []string{"confirmed", "revoked", "store_error", "cut_off"}
