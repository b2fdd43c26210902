package proxy

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// An AntiReplay decides whether 0-RTT early data presented with a TLS
// session may be accepted: it reports fresh == true for exactly one call
// with a given identity (the ticket or session ID the client presented)
// across every server that shares the decision, for at least ttl from now.
// issued is when the session's ticket was issued, by the issuing server's
// clock, never later: to the millisecond or finer for the cache's own
// tickets (session.Cache.TicketIssuedAt), else in whole seconds. A
// register that may have forgotten strikes made since then (a store that
// lost its data) must refuse. Any error means "do not accept"; one with a
// method RegisterLost that reports true (farm.ErrStoreLost) is counted as
// reason "store_lost". farm.Node.Strike is one, shared by the whole farm.
type AntiReplay func(ctx context.Context, identity []byte, issued time.Time, ttl time.Duration) (fresh bool, err error)

// Defaults for the early data fields of Config.
const (
	// defaultEarlyDataWindow is how old a session may be and still carry
	// early data.
	defaultEarlyDataWindow = 10 * time.Minute
	// defaultEarlyDataSkew is added to every strike register record, to
	// cover clock differences between servers.
	defaultEarlyDataSkew = 5 * time.Second
	// defaultAntiReplayTimeout bounds one AntiReplay call.
	defaultAntiReplayTimeout = time.Second
)

// extEarlyData is the TLS early_data extension's number (RFC 8446).
const extEarlyData = 42

// A rejectReason is why 0-RTT was refused.
type rejectReason uint32

const (
	rejectNone             rejectReason = iota
	rejectDisabled                      // the listener does not accept early data
	rejectReplay                        // the session was already used for early data
	rejectStoreUnavailable              // the anti-replay decision could not be made
	rejectTooOld                        // the session is older than the early data window
	rejectOther                         // no session, or quic-go refused it
	rejectStoreLost                     // the anti-replay register began after the ticket was issued
	numRejectReasons
)

func (r rejectReason) String() string {
	return [...]string{"none", "disabled", "replay", "store_unavailable", "too_old", "other", "store_lost"}[r]
}

// quicState is what one QUIC connection's handshake learned about early
// data, for counting when it completes.
type quicState struct {
	offered atomic.Bool
	reason  atomic.Uint32 // a rejectReason
}

type quicStateKey struct{}

// admitEarlyData makes the per-handshake config child keep
// SessionState.EarlyData of a session offered with early data only if the
// listener accepts early data, the session is young enough, and the
// anti-replay decision says this is its first use. crypto/tls decides early
// data with the first PSK identity only, from the EarlyData field of the
// session UnwrapSession returns, before it checks the PSK binder; so that is
// where the decision is made. Refusing early data never refuses the
// session: the handshake resumes in 1-RTT.
func (q *quicListener) admitEarlyData(hello *tls.ClientHelloInfo, child *tls.Config) {
	ctx := hello.Context()
	qs, _ := ctx.Value(quicStateKey{}).(*quicState)
	offered := slices.Contains(hello.Extensions, extEarlyData)
	if offered {
		q.l.s.quic.offered.Add(1)
		if qs != nil {
			qs.offered.Store(true)
		}
	}
	unwrap := child.UnwrapSession
	calls := 0
	child.UnwrapSession = func(identity []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
		ss, err := unwrap(identity, cs)
		calls++
		if err != nil || ss == nil || !ss.EarlyData || !offered || calls > 1 {
			return ss, err
		}
		if r := q.admit(ctx, identity, ss); r != rejectNone {
			ss.EarlyData = false
			q.l.s.quic.rejected[r].Add(1)
			if qs != nil {
				qs.reason.Store(uint32(r))
			}
		}
		return ss, nil
	}
}

// admit decides whether ss, presented as identity, may carry early data.
func (q *quicListener) admit(ctx context.Context, identity []byte, ss *tls.SessionState) rejectReason {
	s := q.l.s
	if !q.l.cfg.EarlyData {
		return rejectDisabled
	}
	issued, ok := sessionIssued(ss)
	if !ok {
		return rejectTooOld
	}
	// The cache knows the issue time of its own tickets more finely than
	// createdAt's whole seconds, so that a ticket issued just after the
	// farm's strike register began (plus MaxSkew) carries early data.
	// Safe: the register refuses when begun > issued - MaxSkew, so an
	// issue time may be early by any amount (it only refuses more), never
	// late. Both times are read from the clock as the ticket is issued,
	// createdAt first; the cache's is truncated to the millisecond (an ID)
	// or exact (a stateless ticket's binding), so it is no later than the
	// issue. It is taken only within the second createdAt names, where it
	// must lie when both read one clock: a cache with a clock of its own
	// (session.Config.Now) is never believed beyond crypto/tls's.
	if t, ok := s.cache.TicketIssuedAt(identity, ss); ok && !t.Before(issued) && t.Before(issued.Add(time.Second)) {
		issued = t
	}
	age := max(time.Since(issued), 0)
	if age > s.earlyWindow {
		return rejectTooOld
	}
	// createdAt has a resolution of one second: round the age down.
	ttl := s.earlyWindow - age + s.earlySkew + time.Second
	ctx, cancel := context.WithTimeout(ctx, defaultAntiReplayTimeout)
	defer cancel()
	fresh, err := s.antiReplay(ctx, identity, issued, ttl)
	var lost interface{ RegisterLost() bool }
	switch {
	case errors.As(err, &lost) && lost.RegisterLost():
		return rejectStoreLost
	case err != nil:
		return rejectStoreUnavailable
	case !fresh:
		return rejectReplay
	}
	return rejectNone
}

// sessionIssued returns when the ticket that carries ss was issued: its
// creation time in crypto/tls's serialization (RFC 8446-style struct:
// uint16 version, uint8 type, uint16 cipher suite, uint64 created_at in
// Unix seconds). crypto/tls sets it when it issues each ticket.
func sessionIssued(ss *tls.SessionState) (time.Time, bool) {
	b, err := ss.Bytes()
	if err != nil || len(b) < 13 || binary.BigEndian.Uint16(b) != tls.VersionTLS13 || b[2] != 1 {
		return time.Time{}, false
	}
	return time.Unix(int64(binary.BigEndian.Uint64(b[5:13])), 0), true
}

// localStrikes is the anti-replay register of a server that is alone: a
// set of identity hashes in memory, each dropped when its time has passed.
type localStrikes struct {
	mu  sync.Mutex
	m   map[[sha256.Size]byte]time.Time
	max int
}

var errStrikesFull = errors.New("proxy: local strike register full")

func newLocalStrikes(max int) *localStrikes {
	return &localStrikes{m: map[[sha256.Size]byte]time.Time{}, max: max}
}

// strike is an AntiReplay: the register lives as long as the process, so
// issued does not matter.
func (r *localStrikes) strike(_ context.Context, identity []byte, _ time.Time, ttl time.Duration) (bool, error) {
	k := sha256.Sum256(identity)
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if until, ok := r.m[k]; ok && now.Before(until) {
		return false, nil
	}
	if len(r.m) >= r.max {
		for k, until := range r.m {
			if !now.Before(until) {
				delete(r.m, k)
			}
		}
		if len(r.m) >= r.max {
			return false, errStrikesFull
		}
	}
	r.m[k] = now.Add(ttl)
	return true, nil
}
