package farm

import (
	"time"

	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/session"
)

// Carried sessions (session.Cache.SetCarry): with farm-wide ticket keys, a
// write-through node in broadcast mode may issue tickets that carry their
// session, sealed under the farm's ticket keys, after the session's ID. A
// node presented such a ticket for an ID it does not hold, while the ID is
// young, takes the carried copy at once as if the issuer's broadcast copy
// had just arrived (AdmitCarried), instead of waiting for the bus: every
// check a peer's copy passes applies (see peerCopy), and a copy is taken
// only while nothing the farm may have said about the session can have
// passed this node by.

// carryAllowed reports whether the node issues carried tickets while it
// reaches the farm: Config.CarrySessions, farm-wide ticket keys, broadcast
// mode, write-through, a cache that is not single use, and a bus that marks
// its delivery (transport.DeliveryMarker).
func (n *Node) carryAllowed() bool {
	_, marks := n.cfg.Bus.(transport.DeliveryMarker)
	return n.cfg.CarrySessions && n.rotating.Load() && n.cfg.Mode == Broadcast &&
		n.cfg.WriteThrough && !n.cfg.Cache.Config().SingleUse && marks
}

// deliveryLag returns how far behind the present the node's bus delivery
// is, as the bus marks it, and false if the bus has no mark (it is not a
// DeliveryMarker, or its subscription is not up).
func (n *Node) deliveryLag() (time.Duration, bool) {
	dm, ok := n.cfg.Bus.(transport.DeliveryMarker)
	if !ok {
		return 0, false
	}
	t := n.markedThrough(dm)
	if t.IsZero() {
		return 0, false
	}
	return time.Since(t), true
}

// noteReach records whether the node reaches the farm now, and turns the
// cache's carried tickets on while it does (if allowed), off while it does
// not: a node cut off from the farm issues fallback tickets, or bare IDs.
// Its caller serializes it (deg.update).
func (n *Node) noteReach(ok bool) {
	switch {
	case !ok:
		n.reachSince.Store(0)
	case n.reachSince.Load() == 0:
		n.reachSince.Store(max(n.cfg.Now().UnixNano(), 1))
	}
	n.cfg.Cache.SetCarry(ok && n.carryAllowed())
}

// restartReach counts the node's period of reaching the farm from now, if
// it reaches it: the bus may have lost messages for it since earlier (see
// settleGap), so a carried copy issued before now is refused.
func (n *Node) restartReach() {
	n.deg.update.Lock()
	if n.reachSince.Load() != 0 {
		n.reachSince.Store(max(n.cfg.Now().UnixNano(), 1))
	}
	n.deg.update.Unlock()
}

// AdmitCarried implements session.CarriedAdmitter for the node's cache
// (see Node.admitCarried).
func (p cachePeer) AdmitCarried(id session.ID, r session.Record) (session.Record, bool) {
	return p.n.admitCarried(id, r)
}

// admitCarried reports whether the node takes r, the carried copy of the session id that a client presented
// and that the cache does not hold, and returns it as the node knows it
// (cut, perhaps). It takes it only if
//
//   - the node is in broadcast mode, with write-through, not single use,
//     and has read the farm's revocations;
//   - the node has reached the farm (the bus subscription up, the probes
//     answered, the store's writes succeeding) without a break since
//     before id was issued, allowing MaxSkew between the clocks: so every
//     retirement and cut published about the session after its issue has
//     been delivered to this node, or is on its way as it would be for a
//     peer's broadcast copy;
//   - the bus has delivered to this node everything published until
//     MaxDeliveryLag ago (its mark, see transport.DeliveryMarker): so every
//     revocation or retirement published before then has been applied
//     here, and RevokeSession waits as long before it reports one
//     applied;
//   - id is young: issued less than the shorter of WriteThroughTimeout and
//     the cache's ResumeGrace ago (not more than MaxSkew ahead). A session
//     resumed anywhere stays resumable for ResumeGrace past that
//     resumption, which is later than its issue, so no node takes a copy
//     past any grace cut of it;
//   - a peer's broadcast copy of it would be taken now (peerCopy: not
//     retired here, not resumed here lately, not held back by a retirement
//     or cut kept here).
//
// Counted in tlsfarm_farm_carried_total.
func (n *Node) admitCarried(id session.ID, r session.Record) (session.Record, bool) {
	now := n.cfg.Now()
	if !n.carryAllowed() || !n.revsKnown.Load() {
		n.ctr.carried[carryOff].Add(1)
		return r, false
	}
	issued, ok := n.cfg.Cache.IssuedAt(id)
	if !ok {
		n.ctr.carried[carryOld].Add(1)
		return r, false
	}
	since := n.reachSince.Load()
	if since == 0 || !n.connected.Load() {
		n.ctr.carried[carryCutOff].Add(1)
		return r, false
	}
	if lag, ok := n.deliveryLag(); !ok || lag > n.cfg.MaxDeliveryLag {
		// Delivery may be behind what peers published about it: a
		// revocation, a retirement (see Config.MaxDeliveryLag).
		n.ctr.carried[carryLagging].Add(1)
		return r, false
	}
	if issued.Add(-n.cfg.MaxSkew).UnixNano() < since {
		// Issued before (or too near) the start of this period: what
		// the farm said of it during the gap may have passed us by.
		n.ctr.carried[carryGap].Add(1)
		return r, false
	}
	window := n.cfg.WriteThroughTimeout
	if g := n.cfg.Cache.Config().ResumeGrace; g > 0 {
		window = min(window, g)
	}
	if age := now.Sub(issued); age < -n.cfg.MaxSkew || age >= window {
		n.ctr.carried[carryOld].Add(1)
		return r, false
	}
	rec, ok := n.peerCopy(id, r, now)
	if !ok {
		n.ctr.carried[carryRefused].Add(1)
		return r, false
	}
	// The cache inserts it next (with OriginLoader: its issuer publishes
	// it); what an insert of a peer's copy implies is noted here.
	if n.pend != nil {
		// With LazyPeers, the issuer's broadcast copy may be kept
		// here undecoded: the cache holds the session from now on, as
		// when a lookup takes that copy (takePending). Left behind, it
		// would be taken whole once the cache's copy, cut by its
		// resumption here, had lapsed: past the grace.
		n.pend.drop(id)
	}
	n.peerCopyTaken(id, &rec, now)
	n.noteLoaded(id, rec.Expires)
	n.ctr.carried[carryAdmitted].Add(1)
	return rec, true
}

// mayBeCarried reports whether this node may hold the session id, which a
// handshake resumed at now, from a carried copy (see admitCarried): carry
// is on and id is young enough for a copy to have been admitted, allowing
// MaxSkew. Its issuer's store write may then not have landed, so that the
// store part of the grace cut (written only over a record that is there)
// found nothing, and only the child's message tells the issuer to cut
// its copy and its late write. A gap on the issuer's subscription (its
// path cut while it issued, the store restarted) loses that message, and
// a reconcile finds the store holding the issuer's own write, whole: the
// cut would reach it only with a request for everything (a write-back).
// So the resuming node holds such a cut (Node.held), which it re-sends
// when a peer back from a gap asks for what its peers hold.
func (n *Node) mayBeCarried(id session.ID, now time.Time) bool {
	if !n.carryAllowed() {
		return false
	}
	issued, ok := n.cfg.Cache.IssuedAt(id)
	if !ok {
		return false
	}
	window := n.cfg.WriteThroughTimeout
	if g := n.cfg.Cache.Config().ResumeGrace; g > 0 {
		window = min(window, g)
	}
	return now.Sub(issued) < window+n.cfg.MaxSkew
}

// Why AdmitCarried answered as it did, as tlsfarm_farm_carried_total
// labels it.
const (
	carryAdmitted = iota // taken
	carryRefused         // a peer's copy would be refused (retired, resumed, held back)
	carryOld             // not young, or its issue time unreadable
	carryGap             // issued before the node's current period of reaching the farm
	carryCutOff          // the node cannot reach the farm
	carryLagging         // the node's bus delivery lags, or is not marked
	carryOff             // carried copies not taken here (config, mode, revocations unknown)
	numCarryResults
)

var carryResults = []string{"admitted", "refused", "old", "gap", "cut_off", "lagging", "off"}
