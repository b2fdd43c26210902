package farm

import (
	"sync"
	"time"
)

// breaker stops write-through from charging every handshake its deadline
// while the store is slow or down. After threshold consecutive failures it
// opens for cooldown: handshakes do not wait. Then one handshake waits as a
// trial; success closes it, failure opens it again.
type breaker struct {
	mu        sync.Mutex
	threshold int
	cooldown  time.Duration
	failures  int
	openUntil time.Time
	trial     bool
	trips     uint64
}

// allow reports whether this handshake should wait for the store.
func (b *breaker) allow(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.failures < b.threshold {
		return true
	}
	if now.Before(b.openUntil) || b.trial {
		return false
	}
	b.trial = true
	return true
}

func (b *breaker) record(ok bool, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.trial = false
	if ok {
		b.failures = 0
		return
	}
	b.failures++
	if b.failures >= b.threshold {
		if !now.Before(b.openUntil) {
			b.trips++
		}
		b.openUntil = now.Add(b.cooldown)
	}
}

func (b *breaker) state(now time.Time) (open bool, trips uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.failures >= b.threshold && now.Before(b.openUntil), b.trips
}

// storeAnswered closes the breaker after a batch of puts (> 0) reached the
// store in the background: the store works again (a failover completed, a
// partition healed), so handshakes need not wait out the rest of the
// cooldown before they use it.
func (n *Node) storeAnswered(puts int) {
	if puts > 0 {
		n.brk.record(true, n.cfg.Now())
	}
}
