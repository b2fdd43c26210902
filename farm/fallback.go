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
	mu           sync.Mutex
	storeFailing bool
	on           bool
	tickets      bool // the cache took the fallback lifetime (not single use, not stateless)
	episodes     uint64
}

// setStoreFailing records the outcome of the last store write.
func (n *Node) setStoreFailing(failing bool) {
	n.deg.mu.Lock()
	n.deg.storeFailing = failing
	n.deg.mu.Unlock()
	n.updateFallback()
}

// updateFallback turns fallback tickets on while the node cannot reach
// the farm (the bus is down or the store is failing), if the node's ticket
// keys are farm-wide (RotateTicketKeys) and fallback is not disabled; off
// once it can again.
func (n *Node) updateFallback() {
	lifetime := n.cfg.FallbackTicketLifetime
	if lifetime <= 0 || !n.rotating.Load() {
		return
	}
	n.deg.mu.Lock()
	want := !n.connected.Load() || n.deg.storeFailing
	changed := want != n.deg.on
	n.deg.on = want
	if changed && want {
		n.deg.episodes++
	}
	n.deg.mu.Unlock()
	if !changed {
		return
	}
	if want {
		took := n.cfg.Cache.SetTicketFallback(lifetime)
		n.deg.mu.Lock()
		n.deg.tickets = took
		n.deg.mu.Unlock()
		if took {
			n.log.Warn("farm: unreachable; issuing short-lived farm tickets instead of cached sessions until it returns (they cannot be revoked individually before they expire)",
				"lifetime", lifetime)
		}
		return
	}
	n.cfg.Cache.SetTicketFallback(0)
	n.log.Info("farm: reachable again; issuing cached sessions")
}

// fallbackState reports whether the node issues fallback tickets now, and
// how many times it has started to.
func (n *Node) fallbackState() (on bool, episodes uint64) {
	n.deg.mu.Lock()
	defer n.deg.mu.Unlock()
	return n.deg.on && n.deg.tickets, n.deg.episodes
}
