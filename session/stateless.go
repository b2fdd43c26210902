package session

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// A Mode selects the kind of ticket the crypto/tls glue issues and accepts.
type Mode uint8

const (
	// Stateful issues session IDs as tickets and keeps the sessions in the
	// cache; it accepts session IDs only.
	Stateful Mode = iota
	// Stateless issues tickets encrypted with the tls.Config's session
	// ticket keys (see package ticket) and accepts both those and session
	// IDs still in the cache.
	Stateless
	// Mixed issues session IDs, like Stateful, and accepts both session IDs
	// and stateless tickets. A farm moving between Stateful and Stateless
	// passes through Mixed on every node first, so that no ticket already
	// issued stops resuming.
	Mixed
)

// String returns "stateful", "stateless" or "mixed".
func (m Mode) String() string {
	switch m {
	case Stateful:
		return "stateful"
	case Stateless:
		return "stateless"
	case Mixed:
		return "mixed"
	}
	return fmt.Sprintf("Mode(%d)", uint8(m))
}

// ParseMode parses "stateful", "stateless" or "mixed", in any case.
func ParseMode(s string) (Mode, error) {
	for _, m := range []Mode{Stateful, Stateless, Mixed} {
		if strings.EqualFold(s, m.String()) {
			return m, nil
		}
	}
	return 0, fmt.Errorf("session: unknown mode %q (want stateful, stateless or mixed)", s)
}

// unwrapTicket decrypts a stateless ticket and checks the binding that issue
// put in its Extra.
func (c *Cache) unwrapTicket(identity []byte, cs tls.ConnectionState, src *tls.Config) unwrapped {
	var r unwrapped
	ss, err := src.DecryptTicket(identity, cs)
	if err != nil || ss == nil {
		c.ctr.ticketsUndecryptable.Add(1)
		return r
	}
	if c.cfg.SingleUse {
		// A ticket is held nowhere, so it cannot be retired: resumed, it
		// would resume again and again.
		c.ctr.ticketsSingleUse.Add(1)
		return r
	}
	if hasCarried(ss.Extra) {
		// The sealed part of a carried ticket (see SetCarry), presented
		// on its own: it resumes only by its ID.
		c.ctr.ticketsForeign.Add(1)
		return r
	}
	now := c.nowNano()
	r.ticket = true
	name, chain, start, issued, expires, ok := findBinding(ss.Extra)
	if !ok && c.cfg.Mode == Stateful {
		c.ctr.ticketsForeign.Add(1) // a stateful cache takes only the farm's own tickets
		return r
	}
	if !ok {
		// Issued by a server without this glue: accepted, but nothing binds
		// it to a server name or a chain.
		c.ctr.ticketsUnbound.Add(1)
		r.chainStart = now
	} else {
		if !c.cfg.AllowServerNameMismatch && !boundNameIs(name, cs.ServerName) {
			c.ctr.refusedSNI.Add(1)
			return r
		}
		if max(issued, start)-now > c.maxSkew.Load() {
			// Issued, or begun, further ahead of this clock than
			// MaxClockSkew: its age, counted from then, would let it
			// outlive Lifetime (or its chain MaxChainLifetime) by its
			// issuer's clock lead.
			c.ctr.ticketsFuture.Add(1)
			return r
		}
		// Ended at the instant that a cached session's expiry is (Cache.get).
		if now-start >= int64(c.cfg.MaxChainLifetime) {
			c.ctr.chainExpired.Add(1)
			return r
		}
		if now-issued >= int64(c.cfg.Lifetime) || expires != 0 && now >= expires {
			c.ctr.ticketsExpired.Add(1)
			return r
		}
		if c.tomb.revoked(chain, now) {
			c.ctr.ticketsRevoked.Add(1)
			return r
		}
		// A chain cannot begin in the future (as Insert takes it): the
		// successor continues it from no later than now.
		r.chain, r.chainStart = chain, min(start, now)
	}
	c.ctr.ticketsAccepted.Add(1)
	r.ss = ss
	return r
}

// bindingTag starts the Extra entry that binds a stateless ticket to its
// server name, chain and issue time: tag, chain (8 bytes), chain start and
// issue time (8 bytes each, Unix nanoseconds), server name. The ticket's
// encryption authenticates it.
var bindingTag = []byte("tlsfarm/1\x00")

const bindingLen = 24

func appendBinding(b []byte, serverName string, chain uint64, start, issued int64) []byte {
	b = append(b, bindingTag...)
	b = binary.BigEndian.AppendUint64(b, chain)
	b = binary.BigEndian.AppendUint64(b, uint64(start))
	b = binary.BigEndian.AppendUint64(b, uint64(issued))
	return append(b, strings.ToLower(serverName)...)
}

// fallbackTag starts the binding of a fallback ticket (see
// SetTicketFallback): the fields of bindingTag's, then the expiry (8 bytes,
// Unix nanoseconds), then the server name.
var fallbackTag = []byte("tlsfarm/2\x00")

func appendFallbackBinding(b []byte, serverName string, chain uint64, start, issued, expires int64) []byte {
	b = append(b, fallbackTag...)
	b = binary.BigEndian.AppendUint64(b, chain)
	b = binary.BigEndian.AppendUint64(b, uint64(start))
	b = binary.BigEndian.AppendUint64(b, uint64(issued))
	b = binary.BigEndian.AppendUint64(b, uint64(expires))
	return append(b, strings.ToLower(serverName)...)
}

// bindingCap returns the length of a binding for serverName, fallback or
// not (a non-ASCII name may change length in lower case; append then grows
// the buffer).
func bindingCap(serverName string) int {
	return len(fallbackTag) + bindingLen + 8 + len(serverName)
}

// findBinding returns the binding in a ticket's Extra (serverName, in lower
// case, shares its memory); expires is zero for an ordinary stateless ticket
// (it lives Config.Lifetime).
func findBinding(extra [][]byte) (serverName []byte, chain uint64, start, issued, expires int64, ok bool) {
	for _, x := range extra {
		switch {
		case bytes.HasPrefix(x, bindingTag) && len(x) >= len(bindingTag)+bindingLen:
			x = x[len(bindingTag):]
		case bytes.HasPrefix(x, fallbackTag) && len(x) >= len(fallbackTag)+bindingLen+8:
			x = x[len(fallbackTag):]
			expires = int64(binary.BigEndian.Uint64(x[bindingLen:]))
			if expires == 0 {
				expires = 1
			}
			x = append(x[:bindingLen:bindingLen], x[bindingLen+8:]...)
		default:
			continue
		}
		chain = binary.BigEndian.Uint64(x)
		start = int64(binary.BigEndian.Uint64(x[8:]))
		issued = int64(binary.BigEndian.Uint64(x[16:]))
		return x[bindingLen:], chain, start, issued, expires, true
	}
	return nil, 0, 0, 0, 0, false
}

// boundNameIs reports whether name, the server name of a binding, is sni
// under Unicode case folding, as strings.EqualFold, without converting name
// to a string when both are ASCII.
func boundNameIs(name []byte, sni string) bool {
	if len(name) == len(sni) {
		i := 0
		for ; i < len(sni); i++ {
			a, b := name[i], sni[i]
			if a >= utf8.RuneSelf || b >= utf8.RuneSelf {
				break
			}
			if 'A' <= a && a <= 'Z' {
				a += 'a' - 'A'
			}
			if 'A' <= b && b <= 'Z' {
				b += 'a' - 'A'
			}
			if a != b {
				return false
			}
		}
		if i == len(sni) {
			return true
		}
	}
	return strings.EqualFold(string(name), sni)
}

// SetTicketFallback tells the cache that the handshake config's session
// ticket keys are farm-wide, and sets its fallback. From the first call on, a
// Stateful cache accepts the stateless tickets this farm issues (bound to a
// server name and a chain by this package, and encrypted under those keys),
// as a Mixed cache does; tickets from other issuers stay refused, and a
// SingleUse cache resumes no ticket at all (see Config.SingleUse). A farm node
// whose ticket keys are farm-wide calls it with 0 when it starts sharing
// them, so that other nodes' fallback tickets resume on it.
//
// With lifetime > 0 a Stateful or Mixed cache issues, until it is called
// again with 0, stateless tickets under those keys that expire after
// lifetime, instead of cached sessions, and SetTicketFallback reports
// whether the cache now issues them. A farm node turns this on while it
// cannot reach the farm, so that clients keep resuming on every node instead
// of on this one only. The fallback does nothing, and SetTicketFallback
// reports false, for a SingleUse cache (a ticket cannot be retired, and an
// unreachable farm must mean a full handshake, never a replayable ticket)
// and for a Stateless one. Per-session revocation does not reach these
// tickets before they expire (a revoked chain still does, on nodes that know
// of the revocation).
func (c *Cache) SetTicketFallback(lifetime time.Duration) bool {
	c.life.acceptTickets.Store(true)
	if c.cfg.SingleUse || c.cfg.Mode == Stateless {
		return false
	}
	c.life.fallback.Store(int64(min(max(lifetime, 0), maxDuration)))
	return lifetime > 0
}

func (c *Cache) fallbackLifetime() time.Duration {
	if c.cfg.SingleUse {
		return 0
	}
	return time.Duration(c.life.fallback.Load())
}
