package farm

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// ErrStoreUnavailable is returned by Strike when the farm has no store, or
// the store is failing and the node is not trying it (its circuit breaker
// is open).
var ErrStoreUnavailable = errors.New("farm: store unavailable")

// ErrStoreLost is returned by Strike when the store's strike register began
// after the ticket was issued: the store lost its data (it restarted
// empty, or one shard of a cluster did) since then, or the register is new,
// so it cannot tell whether the ticket was used for early data before. It
// has a method RegisterLost that reports true, by which a caller that does
// not import farm (proxy) tells it from other errors.
var ErrStoreLost error = storeLostError{}

type storeLostError struct{}

func (storeLostError) Error() string {
	return "farm: the strike register began after the ticket was issued"
}

// RegisterLost marks the error for callers that do not import farm.
func (storeLostError) RegisterLost() bool { return true }

// The strike register's layout in the store. With a transport.Striker,
// each strike lies in one of strikeGroups groups, "once:<2 hex digits>",
// chosen by its hash, each with a marker of its own beside its records (in
// one slot of a Redis Cluster): a shard that loses its data loses the
// markers of its groups with their strikes. Without one, the strikes are
// ConsumeToken's records and the register has one marker, a coordination
// key.
const (
	strikeGroups    = 256
	strikeMarkerKey = "strike-register"
	// strikeMarkerTTL is how long a marker lasts after the last strike
	// that refreshed it (at least twice the strike's TTL, so that a marker
	// outlives every strike of its group): a marker that lapses only
	// refuses the tickets issued before it is written again, and none of
	// those has a live strike. It keeps the markers of a farm that no
	// longer uses early data from staying in the store for ever.
	strikeMarkerTTL = 24 * time.Hour
	// strikeMarkerRefresh is how often a marker kept through the
	// Coordinator is rewritten (unchanged but for its write time and TTL).
	strikeMarkerRefresh = time.Hour
)

// markerTTL returns the TTL of a marker refreshed by a strike with ttl.
func markerTTL(ttl time.Duration) time.Duration { return max(strikeMarkerTTL, 2*ttl) }

// Strike is ConsumeToken for 0-RTT anti-replay: it records identity — a
// TLS session ticket or session ID presented with early data — and reports
// whether this was its first use in the farm: fresh is true for exactly one
// caller across every node while the record lasts, ttl from now.
//
// issued is when the ticket was issued (by the issuing node's clock). The
// store's register remembers when it began: when the store first kept it,
// or last lost it (a store restarted empty, or a shard of a Redis Cluster
// that lost its data alone). A ticket issued before the register began, less
// Config.MaxSkew for the clocks, may have been struck in a register that is
// gone, so Strike refuses it with ErrStoreLost, in the same atomic step
// as the strike where the store allows (Redis), or by reading the
// register's marker after the strike (NATS). So a ticket used for early
// data before the store lost its data is never accepted for early data
// after it; it still resumes in 1-RTT. The zero issued is always refused.
//
// It adds to ConsumeToken what a handshake needs: it never waits longer
// than Config.LookupTimeout (or ctx), and it does not even try while the
// store's circuit breaker is open. Any doubt returns fresh == false with an
// error: no store or one that cannot consume atomically
// (ErrStoreUnavailable), the breaker open (ErrStoreUnavailable), a register
// younger than the ticket (ErrStoreLost), a deadline that passed — even if
// the write may have reached the store, in which case the identity is simply
// consumed. A caller accepts early data only on (true, nil). ttl should
// cover the time during which identity could still be presented with early
// data, plus the clock skew between nodes.
func (n *Node) Strike(ctx context.Context, identity []byte, issued time.Time, ttl time.Duration) (fresh bool, err error) {
	defer func() { n.ctr.strikes[strikeResultOf(fresh, err)].Add(1) }()
	if ttl <= 0 {
		return false, errors.New("farm: strike with a TTL that is not positive")
	}
	if n.cfg.Records == nil || n.cfg.Coord == nil || !n.brk.allow(n.cfg.Now()) {
		return false, ErrStoreUnavailable
	}
	if _, ok := n.cfg.Records.(transport.RecordTaker); !ok {
		return false, ErrStoreUnavailable
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.LookupTimeout)
	defer cancel()
	fresh, err = n.strike(ctx, identity, issued, ttl)
	n.brk.record(err == nil || errors.Is(err, ErrStoreLost), n.cfg.Now())
	if err != nil {
		return false, err
	}
	return fresh, nil
}

// A strikeResult is how a Strike ended, for Metrics.
type strikeResult uint8

const (
	strikeFresh     strikeResult = iota // first use
	strikeReplay                        // used before
	strikeStoreLost                     // ErrStoreLost
	strikeError                         // any other error
	numStrikeResults
)

func strikeResultOf(fresh bool, err error) strikeResult {
	switch {
	case errors.Is(err, ErrStoreLost):
		return strikeStoreLost
	case err != nil:
		return strikeError
	case fresh:
		return strikeFresh
	}
	return strikeReplay
}

// strike is Strike once the node has decided to ask the store.
func (n *Node) strike(ctx context.Context, identity []byte, issued time.Time, ttl time.Duration) (bool, error) {
	since := issued.Add(-n.cfg.MaxSkew)
	if issued.IsZero() {
		since = time.Time{}
	}
	h := n.tokenHash(identity)
	if s, ok := n.cfg.Records.(transport.Striker); ok {
		group := onceKeyPrefix + hex.EncodeToString(h[:1])
		it := transport.Item{Key: hex.EncodeToString(h), Value: []byte{1}, TTL: max(ttl, time.Millisecond)}
		fresh, err := s.StrikeRecord(ctx, group, it, since, markerTTL(ttl))
		switch {
		case errors.Is(err, transport.ErrRegisterUnknown):
			// The store may have lost strikes and kept the
			// markers (it came back from older data): refused,
			// until the register begins anew (see primeStrikes).
			n.renewStrikesSoon()
			return false, ErrStoreLost
		case errors.Is(err, transport.ErrRegisterNewer):
			return false, ErrStoreLost
		}
		return fresh, err
	}
	// The strike first, then the marker: a marker read after the strike
	// that began no later than since shows a register kept without a
	// loss from before the ticket was issued to after the strike, so
	// every earlier strike of identity is in the register the strike
	// went to.
	fresh, err := n.ConsumeToken(ctx, identity, ttl)
	if err != nil || !fresh {
		return false, err
	}
	begun, err := n.strikeRegisterBegun(ctx, markerTTL(ttl))
	if err != nil {
		return false, err
	}
	if issued.IsZero() || begun.After(since) {
		return false, ErrStoreLost
	}
	return true, nil
}

// A strikeMarker is the value of the register's marker kept through the
// Coordinator: when the register began and when the marker was last
// written, in Unix milliseconds, and a random nonce (so that a marker
// written again after a loss never equals the one lost).
type strikeMarker [24]byte

func newStrikeMarker(begun, written time.Time) strikeMarker {
	var m strikeMarker
	binary.BigEndian.PutUint64(m[:8], uint64(begun.UnixMilli()))
	binary.BigEndian.PutUint64(m[8:16], uint64(written.UnixMilli()))
	rand.Read(m[16:])
	return m
}

func (m strikeMarker) times() (begun, written time.Time) {
	return time.UnixMilli(int64(binary.BigEndian.Uint64(m[:8]))), time.UnixMilli(int64(binary.BigEndian.Uint64(m[8:16])))
}

// strikeRegisterBegun reads the register's marker from the Coordinator and
// returns when the register began: now, if the marker is missing (the
// register begins) or is not one (it is replaced).
func (n *Node) strikeRegisterBegun(ctx context.Context, ttl time.Duration) (time.Time, error) {
	now := n.cfg.Now()
	// From the primary: a replica that lags reads no marker, or an old
	// one, and the register would be taken to begin again.
	v, err := n.cfg.Coord.Get(transport.PrimaryRead(ctx), strikeMarkerKey)
	switch {
	case errors.Is(err, transport.ErrNotFound):
		m := newStrikeMarker(now, now)
		if _, err := n.cfg.Coord.SetNX(ctx, strikeMarkerKey, m[:], ttl); err != nil {
			return time.Time{}, err
		}
		// Set by this node or, a moment earlier, by another: the
		// register began no later than now either way.
		return now, nil
	case err != nil:
		return time.Time{}, err
	case len(v) != len(strikeMarker{}):
		m := newStrikeMarker(now, now)
		if _, err := n.cfg.Coord.CompareAndSwap(ctx, strikeMarkerKey, v, m[:], ttl); err != nil {
			return time.Time{}, err
		}
		return now, nil
	}
	old := strikeMarker(v)
	begun, written := old.times()
	if now.Sub(written) > strikeMarkerRefresh || written.After(now.Add(strikeMarkerRefresh)) {
		// Rewritten only if unchanged since read: after a loss, the
		// swap finds no marker and writes nothing. Its result does not
		// change the answer.
		m := old
		binary.BigEndian.PutUint64(m[8:16], uint64(now.UnixMilli()))
		if !bytes.Equal(m[:], v) {
			n.cfg.Coord.CompareAndSwap(ctx, strikeMarkerKey, v, m[:], ttl)
		}
	}
	return begun, nil
}

// primeStrikes writes the strike register's missing markers when the node
// joins, so that the tickets issued from then on (plus Config.MaxSkew) may
// carry early data from their first use: a marker written only by the first
// strike of its group would refuse every ticket issued before it. Writing
// a missing marker is always safe: the register it describes does begin
// then. It tries until it has written them all or the node closes. Then, until
// the node closes, it renews the register whenever a strike finds that
// the store cannot tell whether it is whole (transport.ErrRegisterUnknown:
// the store came back from older data, or failed over), trying until it
// has.
func (n *Node) primeStrikes(ctx context.Context) {
	defer n.wg.Done()
	for wait := time.Duration(0); ; wait = min(max(2*wait, time.Second), time.Minute) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		if n.primeStrikesOnce(ctx) == nil {
			break
		}
	}
	// A strike that asked for a renewal meanwhile found the script
	// missing before priming found it there, or renewed: the register
	// is whole. A strike that finds it missing later asks again.
	select {
	case <-n.strikeRenew:
	default:
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.strikeRenew:
		}
		for wait := time.Duration(0); ; wait = min(max(2*wait, 100*time.Millisecond), 10*time.Second) {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			if n.renewStrikes(ctx) == nil {
				n.log.Warn("farm: the store could not tell whether the 0-RTT strike register is whole (it restarted, perhaps from older data, failed over, or lost its scripts); the register began anew: tickets issued before get no early data")
				break
			}
		}
	}
}

// renewStrikesSoon asks primeStrikes to renew the strike register.
func (n *Node) renewStrikesSoon() {
	select {
	case n.strikeRenew <- struct{}{}:
	default:
	}
}

// renewStrikes makes every group's strike register begin now, within
// Config.OpTimeout, where the store needs it (see
// transport.RegisterRenewer). Every ticket issued before then (less
// Config.MaxSkew) is refused early data from then on, as after a store
// that restarted empty.
func (n *Node) renewStrikes(ctx context.Context) error {
	r, ok := n.cfg.Records.(transport.RegisterRenewer)
	if !ok {
		return nil
	}
	tctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
	defer cancel()
	return r.RenewRegister(tctx, strikeGroupNames(), strikeMarkerTTL)
}

// strikeGroupNames returns the names of the strike register's groups.
func strikeGroupNames() []string {
	groups := make([]string, strikeGroups)
	for g := range groups {
		groups[g] = onceKeyPrefix + hex.EncodeToString([]byte{byte(g)})
	}
	return groups
}

// primeStrikesOnce writes the strike register's missing markers: all in
// one round trip within Config.OpTimeout where the store can
// (transport.RegisterPrimer), or else each write within
// Config.LookupTimeout, stopping at the first error. A node also calls it
// when it finds that the store lost its data (see checkGeneration).
func (n *Node) primeStrikesOnce(ctx context.Context) error {
	s, ok := n.cfg.Records.(transport.Striker)
	if !ok {
		tctx, cancel := context.WithTimeout(ctx, n.cfg.LookupTimeout)
		defer cancel()
		_, err := n.strikeRegisterBegun(tctx, strikeMarkerTTL)
		return err
	}
	if p, ok := s.(transport.RegisterPrimer); ok {
		// One round trip: striking the groups one at a time took 256,
		// 10 s through a store 20 ms away each way.
		tctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
		err := p.PrimeRegister(tctx, strikeGroupNames(), strikeMarkerTTL)
		cancel()
		if errors.Is(err, transport.ErrRegisterUnknown) {
			if _, renews := s.(transport.RegisterRenewer); !renews {
				return err
			}
			if err = n.renewStrikes(ctx); err == nil {
				n.log.Info("farm: the 0-RTT strike register began anew (a new farm or version, or a store that restarted, failed over or lost its scripts)")
			}
		}
		return err
	}
	for g := range strikeGroups {
		tctx, cancel := context.WithTimeout(ctx, n.cfg.LookupTimeout)
		group := onceKeyPrefix + hex.EncodeToString([]byte{byte(g)})
		_, err := s.StrikeRecord(tctx, group, transport.Item{}, time.Time{}, strikeMarkerTTL)
		cancel()
		if errors.Is(err, transport.ErrRegisterUnknown) {
			// A new farm, a new version, or a store that came back
			// from older data: every group begins anew.
			if err = n.renewStrikes(ctx); err == nil {
				n.log.Info("farm: the 0-RTT strike register began anew (a new farm or version, or a store that restarted, failed over or lost its scripts)")
				// The renewal wrote every group's marker: striking
				// the other groups one round trip at a time would
				// only hold up the caller (a write-back, after a
				// store restarted empty: 255 round trips).
				if _, renews := s.(transport.RegisterRenewer); renews {
					return nil
				}
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}
