package farm

import (
	"time"

	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// A settledGap is when the node last began to settle a gap in what its bus
// subscription delivered (settleGap). The settle checks the sessions the
// node holds then; a peer's message of new sessions sealed before it may
// still be on its way: queued by the bus's client ahead of the messages it
// dropped (a NATS slow consumer hands its backlog over after reporting the
// gap), or sent late. Inserted, its copy of a session that a lost message
// retired or cut would undo what the settle vouched for (see fromBeforeGap).
type settledGap struct {
	// sealedBefore is when the settle began, by Config.Now, plus MaxSkew
	// on a bus that marks its delivery: a message sealed before it may
	// have been sent before the settle, by a clock as far ahead as the
	// farm allows.
	sealedBefore time.Time
	// at is when the settle began, by time.Now, as the bus's delivery
	// mark reads it (transport.DeliveryMarker).
	at time.Time
}

// noteSettle records that the node begins to settle a gap now (see
// settledGap). On a bus that does not mark its delivery nothing ends the
// window early, so it is not widened by MaxSkew, which would leave every
// new session of the peers to the store for that long after each gap;
// the one bus known to hand over after a gap what its client had queued
// before it (NATS) marks its delivery.
func (n *Node) noteSettle() {
	g := &settledGap{sealedBefore: n.cfg.Now(), at: time.Now()}
	if _, ok := n.cfg.Bus.(transport.DeliveryMarker); ok {
		g.sealedBefore = g.sealedBefore.Add(n.cfg.MaxSkew)
	}
	n.lastGap.Store(g)
}

// fromBeforeGap reports whether a peer's message of new sessions sealed at
// sealed may come from before the last gap the node settled: sealed
// before the settle began (allowing MaxSkew, see noteSettle), and handed
// over before the bus's delivery mark showed that everything its server
// had taken before the settle had been delivered. Such a message's
// sessions are not inserted, as if it were older than MaxAge (see
// receiveOldSessions): the grace cuts their parents' resumptions imply are
// applied, and a handshake that presents one of them reads the store's
// record, which holds what the farm did to it meanwhile (with no store, it
// is a full handshake here).
func (n *Node) fromBeforeGap(sealed time.Time) bool {
	g := n.lastGap.Load()
	if g == nil || !sealed.Before(g.sealedBefore) {
		return false
	}
	if dm, ok := n.cfg.Bus.(transport.DeliveryMarker); ok {
		if t := n.markedThrough(dm); !t.IsZero() && !t.Before(g.at) {
			// Every message the server had taken before the settle
			// has been handled: this one came after it.
			return false
		}
	}
	return true
}
