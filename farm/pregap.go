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
	// sealedBefore is when the settle began, by Config.Now, plus MaxSkew:
	// a message sealed before it may have been sent before the settle,
	// by a clock as far ahead as the farm allows.
	sealedBefore time.Time
	// at is when the settle began, by time.Now, as the bus's delivery
	// mark reads it (transport.DeliveryMarker).
	at time.Time
}

// noteSettle records that the node begins to settle a gap now (see
// settledGap).
func (n *Node) noteSettle() {
	n.lastGap.Store(&settledGap{sealedBefore: n.cfg.Now().Add(n.cfg.MaxSkew), at: time.Now()})
}

// fromBeforeGap reports whether a peer's message of new sessions sealed at
// sealed may come from before the last gap the node settled: sealed
// before the settle began (allowing MaxSkew), and handed over by the bus
// before its delivery mark showed that everything its server had taken
// before the settle had been delivered. Such a message's sessions are not
// inserted, as if it were older than MaxAge (see receiveOldSessions): the
// grace cuts their parents' resumptions imply are applied, and a handshake
// that presents one of them finds the store's record, which holds what the
// farm did to it meanwhile. A bus that does not mark its delivery leaves
// every message sealed before then to the store.
func (n *Node) fromBeforeGap(sealed time.Time) bool {
	g := n.lastGap.Load()
	if g == nil || !sealed.Before(g.sealedBefore) {
		return false
	}
	if dm, ok := n.cfg.Bus.(transport.DeliveryMarker); ok {
		if t := dm.DeliveredThrough(); !t.IsZero() && !t.Before(g.at) {
			// Every message the server had taken before the settle
			// has been handled: this one came after it.
			return false
		}
	}
	return true
}
