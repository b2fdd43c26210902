package farm

import (
	"context"
	"errors"
	"time"
)

// ErrStoreUnavailable is returned by Strike when the farm has no store, or
// the store is failing and the node is not trying it (its circuit breaker
// is open).
var ErrStoreUnavailable = errors.New("farm: store unavailable")

// Strike is ConsumeToken for 0-RTT anti-replay: it records identity — a
// TLS session ticket or session ID presented with early data — and reports
// whether this was its first use in the farm: fresh is true for exactly one
// caller across every node while the record lasts, ttl from now.
//
// It adds to ConsumeToken what a handshake needs: it never waits longer
// than Config.LookupTimeout (or ctx), and it does not even try while the
// store's circuit breaker is open. Any doubt returns fresh == false with an
// error: no store or one that cannot consume atomically
// (ErrStoreUnavailable), the breaker open (ErrStoreUnavailable), a deadline
// that passed — even if the write may have reached the store, in which case
// the identity is simply consumed. A caller accepts early data only on
// (true, nil). ttl should cover the time during which identity could still
// be presented with early data, plus the clock skew between nodes.
func (n *Node) Strike(ctx context.Context, identity []byte, ttl time.Duration) (fresh bool, err error) {
	if ttl <= 0 {
		return false, errors.New("farm: strike with a TTL that is not positive")
	}
	if n.cfg.Records == nil || !n.brk.allow(n.cfg.Now()) {
		return false, ErrStoreUnavailable
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.LookupTimeout)
	defer cancel()
	fresh, err = n.ConsumeToken(ctx, identity, ttl)
	if errors.Is(err, ErrNoStore) || errors.Is(err, ErrNoConsume) {
		return false, ErrStoreUnavailable
	}
	n.brk.record(err == nil, n.cfg.Now())
	if err != nil {
		return false, err
	}
	return fresh, nil
}
