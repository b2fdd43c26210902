package farm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"time"
)

// ErrStoreUnavailable is returned by Strike when the farm has no store, or
// the store is failing and the node is not trying it (its circuit breaker
// is open).
var ErrStoreUnavailable = errors.New("farm: store unavailable")

// strikeKeyPrefix starts the store keys of the strike register.
const strikeKeyPrefix = "x:"

// Strike records identity — a TLS session ticket or session ID presented
// with 0-RTT early data — in the farm's strike register, and reports
// whether this was the first time in the farm: fresh is true for exactly
// one caller across every node while the record lasts, ttl from now.
//
// It is one atomic set-if-absent in the store (Store.SetNX), so it costs
// one store round trip and nothing else; it never waits longer than
// Config.LookupTimeout (or ctx). Any doubt returns fresh == false with an
// error: no store, the store failing (then the node does not even try
// while its circuit breaker is open: ErrStoreUnavailable), a deadline that
// passed — even if the write may have reached the store, in which case the
// identity is simply consumed. A caller accepts early data only on
// (true, nil).
//
// The key is a hash of the farm's name and identity, not keyed by the farm
// secret, so that nodes on either side of a change of secret agree on it;
// the store learns no identity. ttl should cover the time during which
// identity could still be presented with early data, plus the clock skew
// between nodes.
func (n *Node) Strike(ctx context.Context, identity []byte, ttl time.Duration) (fresh bool, err error) {
	if n.cfg.Store == nil {
		return false, ErrStoreUnavailable
	}
	if ttl <= 0 {
		return false, errors.New("farm: strike with a TTL that is not positive")
	}
	if !n.brk.allow(n.cfg.Now()) {
		return false, ErrStoreUnavailable
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.LookupTimeout)
	defer cancel()
	fresh, err = n.cfg.Store.SetNX(ctx, strikeKey(n.cfg.Farm, identity), []byte{1}, ttl)
	n.brk.record(err == nil, n.cfg.Now())
	if err != nil {
		return false, err
	}
	return fresh, nil
}

// strikeKey returns the store key of identity in the strike register: 128
// bits of SHA-256 over a label, the farm's name and identity.
func strikeKey(farm string, identity []byte) string {
	h := sha256.New()
	h.Write([]byte("tlsfarm/v1 strike farm="))
	h.Write([]byte(farm))
	h.Write([]byte{0})
	h.Write(identity)
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return strikeKeyPrefix + hex.EncodeToString(sum[:16])
}
