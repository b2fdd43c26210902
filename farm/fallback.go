package farm

import (
	"sync"
	"time"
)

// defaultFallbackTicketLifetime is the default Config.FallbackTicketLifetime.
const defaultFallbackTicketLifetime = 5 * time.Minute

// degradation tracks whether the node can reach the farm, and turns the
// cache's fallback tickets on and off accordingly.
type degradation struct {
	// update serializes updateFallback from its callers (the bus's state,
	// the store's writes, the health probes, the rotator), so that the
	// cache's fallback is set in the order the decisions were made.
	update       sync.Mutex
	mu           sync.Mutex
	storeFailing bool
	// storeSilent is set while the last store write failed without an
	// answer from the store (see unanswered): it timed out, or the
	// store's server could not be reached. A write the store refused
	// failed with the store there, answering.
	storeSilent bool
	on          bool
	tickets     bool // the cache took the fallback lifetime (not single use, not stateless)
	episodes    uint64
	// busHeard is set once the bus has reported its state (up or down).
	// Until then the node is still connecting, not cut off: fallback
	// tickets are issued, but the outage is not logged.
	busHeard bool
	logged   bool // the current episode's warning has been logged
}

// setStoreOutcome records the outcome of the last store write: err, if
// it failed. began is the store probe's begunCount when the write began:
// a write that went unanswered counts as the store silent only if no
// probe begun after it was answered; one sent into a path that froze and
// failed after the path came back is old news (the gate must not count
// the node cut off from a store that answers again).
func (n *Node) setStoreOutcome(err error, began uint64) {
	n.deg.mu.Lock()
	n.deg.storeFailing = err != nil
	n.deg.storeSilent = err != nil && unanswered(err) && !n.storeProbe.answeredSince(began)
	n.deg.mu.Unlock()
	n.updateFallback()
}

// updateFallback turns fallback tickets on while the node cannot reach
// the farm (the bus is down, a health probe of the bus or the store goes
// unanswered, or the store is failing), if the node's ticket keys are
// farm-wide (RotateTicketKeys) and fallback is not disabled; off once it
// can again. It runs when one of these changes, never per handshake: the
// cache reads its decision with one atomic load.
//
// It also records whether the node reaches the farm, and since when, and
// turns carried tickets on only while it does (see noteReach): carried
// copies and fallback tickets never go out together.
func (n *Node) updateFallback() {
	lifetime := n.cfg.FallbackTicketLifetime
	n.deg.update.Lock()
	defer n.deg.update.Unlock()
	// A hung transport keeps the subscription up, and a write waits,
	// for seconds: the probes find it first.
	probeDown := !n.busProbe.healthy() || !n.storeProbe.healthy()
	n.deg.mu.Lock()
	want := !n.connected.Load() || n.deg.storeFailing || probeDown
	if lifetime <= 0 || !n.rotating.Load() {
		n.deg.mu.Unlock()
		n.noteReach(!want)
		return
	}
	if want {
		// Off before the fallback goes on.
		n.noteReach(false)
	} else {
		defer n.noteReach(true) // after the fallback goes off
	}
	changed := want != n.deg.on
	n.deg.on = want
	if changed && want {
		n.deg.episodes++
	}
	// Warn once per episode, and not while the node has yet to hear
	// from the bus for the first time: that is a start, not an outage.
	// (A probe that goes unanswered is an outage, start or not.)
	outage := n.deg.busHeard || n.deg.storeFailing || probeDown
	warn := want && !changed && n.deg.tickets && !n.deg.logged && outage
	if warn {
		n.deg.logged = true
	}
	n.deg.mu.Unlock()
	if warn {
		n.warnFallback(lifetime)
	}
	if !changed {
		return
	}
	if want {
		took := n.cfg.Cache.SetTicketFallback(lifetime)
		n.deg.mu.Lock()
		n.deg.tickets = took
		warn := took && outage
		n.deg.logged = warn
		n.deg.mu.Unlock()
		if warn {
			n.warnFallback(lifetime)
		}
		return
	}
	n.cfg.Cache.SetTicketFallback(0)
	n.deg.mu.Lock()
	logged := n.deg.logged
	n.deg.logged = false
	n.deg.mu.Unlock()
	if logged {
		n.log.Info("farm: reachable again; issuing cached sessions")
	}
}

// warnFallback logs that the node has started to issue fallback tickets.
func (n *Node) warnFallback(lifetime time.Duration) {
	n.log.Warn("farm: unreachable; issuing short-lived farm tickets instead of cached sessions until it returns (they cannot be revoked individually before they expire)",
		"lifetime", lifetime)
}

// busHeard records that the bus has reported its state at least once.
func (n *Node) busHeard() {
	n.deg.mu.Lock()
	n.deg.busHeard = true
	n.deg.mu.Unlock()
}

// fallbackState reports whether the node issues fallback tickets now, and
// how many times it has started to.
func (n *Node) fallbackState() (on bool, episodes uint64) {
	n.deg.mu.Lock()
	defer n.deg.mu.Unlock()
	return n.deg.on && n.deg.tickets, n.deg.episodes
}
