package session

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"strings"
	"time"
)

// A carried ticket is a session ID followed by the session itself, sealed
// under the handshake config's session ticket keys (farm-wide ones: see
// SetCarry). The layout is
//
//	byte  0         format version (3)
//	bytes 1..26     the session ID, as an ID ticket is (see IDLen)
//	bytes 27..      the session, as tls.Config.EncryptTicket seals it, with
//	                a binding (carriedTag) in its Extra
//
// A node that holds the ID resumes it as it resumes the bare ID, without
// opening the rest; one that does not may, if its farm admits it (see
// CarriedAdmitter), resume the sealed copy as if a peer's copy of the
// session had just arrived.
const (
	carriedVersion = 3
	carriedMin     = 1 + IDLen + 1
)

// carriedTag starts the binding of a carried session: the ID (26 bytes),
// the parent's ID (26 bytes, zero for none), chain (8 bytes), chain start,
// issue time and expiry (8 bytes each, Unix nanoseconds), then the server
// name in lower case. Its own tag keeps it apart from the bindings of
// stateless and fallback tickets: a carried part presented on its own as a
// stateless ticket is refused (see unwrapTicket).
var carriedTag = []byte("tlsfarm/3\x00")

const carriedBindingLen = 2*IDLen + 32

func appendCarriedBinding(b []byte, id, parent *ID, serverName string, chain uint64, start, issued, expires int64) []byte {
	b = append(b, carriedTag...)
	b = append(b, id[:]...)
	b = append(b, parent[:]...)
	b = binary.BigEndian.AppendUint64(b, chain)
	b = binary.BigEndian.AppendUint64(b, uint64(start))
	b = binary.BigEndian.AppendUint64(b, uint64(issued))
	b = binary.BigEndian.AppendUint64(b, uint64(expires))
	return append(b, strings.ToLower(serverName)...)
}

// carriedBinding is a decoded carried binding.
type carriedBinding struct {
	id, parent             ID
	chain                  uint64
	start, issued, expires int64
	serverName             []byte // shares the ticket's memory
	index                  int    // its place in the session's Extra
}

// findCarried returns the carried binding in a session's Extra.
func findCarried(extra [][]byte) (carriedBinding, bool) {
	for i, x := range extra {
		if !bytes.HasPrefix(x, carriedTag) || len(x) < len(carriedTag)+carriedBindingLen {
			continue
		}
		x = x[len(carriedTag):]
		var b carriedBinding
		b.id = ID(x[:IDLen])
		b.parent = ID(x[IDLen : 2*IDLen])
		x = x[2*IDLen:]
		b.chain = binary.BigEndian.Uint64(x)
		b.start = int64(binary.BigEndian.Uint64(x[8:]))
		b.issued = int64(binary.BigEndian.Uint64(x[16:]))
		b.expires = int64(binary.BigEndian.Uint64(x[24:]))
		b.serverName = x[32:]
		b.index = i
		return b, true
	}
	return carriedBinding{}, false
}

// hasCarried reports whether a session's Extra holds a carried binding.
func hasCarried(extra [][]byte) bool {
	for _, x := range extra {
		if bytes.HasPrefix(x, carriedTag) {
			return true
		}
	}
	return false
}

// A CarriedAdmitter is a Farm that may let a cache resume a session it
// does not hold from the copy the client's ticket carries (see SetCarry),
// at once, instead of waiting for the farm to deliver it.
//
// The cache calls AdmitCarried, on the handshake's goroutine and without
// waiting on anything, for an authenticated ID it does not hold whose
// carried copy opened under the config's ticket keys and is bound to that
// ID, to the handshake's server name, and to an expiry and a chain start
// that are not past (nor the start too far in the future). r is the
// record the copy carries; its State is made for the call, and the farm
// may keep it. AdmitCarried reports whether the farm takes
// the copy as it would take the same session arriving from a peer, and
// returns the record as the farm knows it (its expiry perhaps cut). An
// admitted record is inserted with OriginLoader, so that it is not shared
// again: its issuer shares it. A copy not admitted costs nothing more: the
// cache asks Load for the ID, as for a bare ID.
type CarriedAdmitter interface {
	AdmitCarried(id ID, r Record) (Record, bool)
}

// SetCarry turns carried tickets on or off and reports whether the cache
// now issues them. While on, a Stateful cache that is not SingleUse
// issues, for each new session of a handshake whose config it knows (see
// Install), a ticket that carries, after the session's ID, the session
// itself sealed under that config's session ticket keys, bound to the ID,
// its server name, chain and expiry. The keys must be farm-wide (package
// farm calls SetCarry only for a node that rotates them with the farm): a
// node that holds the ID resumes it as before, and one that does not may
// resume the carried copy at once, if its farm admits it (see
// CarriedAdmitter). Fallback tickets (SetTicketFallback) take precedence.
// A SingleUse cache, and one in another Mode, issues none, and SetCarry
// reports false. A cache accepts carried tickets whether or not it issues
// them: one it cannot open, or whose copy its farm does not admit, resumes
// by its ID, as a bare ID would.
func (c *Cache) SetCarry(on bool) bool {
	on = on && c.cfg.Mode == Stateful && !c.cfg.SingleUse
	c.life.carry.Store(on)
	return on
}

// carried returns identity's carried ticket for the session e, inserted
// under id: the ID followed by ss sealed under src's ticket keys with a
// carried binding, or nil if it cannot be sealed (the bare ID then does).
func (c *Cache) carried(cs tls.ConnectionState, ss *tls.SessionState, src *tls.Config, sc *ticketScratch, id, parent *ID, chain uint64, start, now, expires int64) []byte {
	// Room of its own, not sc's: a handshake that issues no carried
	// ticket (most, and every one without SetCarry) does not carry it.
	b := make([]byte, 0, len(carriedTag)+carriedBindingLen+len(cs.ServerName))
	b = appendCarriedBinding(b, id, parent, cs.ServerName, chain, start, now, expires)
	t, err := sealBound(cs, ss, src, sc, b)
	if err != nil {
		return nil
	}
	out := make([]byte, 0, 1+IDLen+len(t))
	out = append(out, carriedVersion)
	out = append(out, id[:]...)
	c.ctr.carriedIssued.Add(1)
	return append(out, t...)
}

// admitCarried opens the carried part of a ticket for id, which the cache
// does not hold, and asks the farm to admit it; an admitted copy is
// inserted and returned, with the session it holds as crypto/tls parsed it
// (what parsing the record's State gives: the handshake resumes it without
// parsing that again). refused reports a copy that must not resume by its
// ID either (bound to another server name).
func (c *Cache) admitCarried(id ID, carried []byte, cs tls.ConnectionState, src *tls.Config) (rec *Record, _ *tls.SessionState, refused bool) {
	box := c.farm.Load()
	if box == nil || src == nil || c.cfg.SingleUse {
		return nil, nil, false
	}
	adm, ok := box.f.(CarriedAdmitter)
	if !ok {
		return nil, nil, false
	}
	ss, err := src.DecryptTicket(carried, cs)
	if err != nil || ss == nil {
		c.ctr.carriedUnopenable.Add(1)
		return nil, nil, false
	}
	b, ok := findCarried(ss.Extra)
	if !ok || b.id != id || b.parent == id {
		c.ctr.carriedUnopenable.Add(1)
		return nil, nil, false
	}
	if !c.cfg.AllowServerNameMismatch && !boundNameIs(b.serverName, cs.ServerName) {
		c.ctr.refusedSNI.Add(1)
		return nil, nil, true
	}
	now := c.nowNano()
	if b.expires <= now || b.start-now > c.maxSkew.Load() || now-b.start >= int64(c.cfg.MaxChainLifetime) {
		// Over, or begun further ahead of this clock than MaxClockSkew:
		// the farm's copy, if any, decides.
		c.ctr.carriedRefused.Add(1)
		return nil, nil, false
	}
	r := Record{
		ServerName: strings.ToLower(string(b.serverName)),
		Expires:    time.Unix(0, b.expires),
		Chain:      b.chain,
		ChainStart: time.Unix(0, chainStartNano(time.Unix(0, b.start), now)),
		Parent:     b.parent,
	}
	// The session as its issuer stored it: without the binding.
	ss.Extra = append(ss.Extra[:b.index:b.index], ss.Extra[b.index+1:]...)
	if len(ss.Extra) == 0 {
		ss.Extra = nil
	}
	if r.State, err = ss.Bytes(); err != nil || r.Chain == 0 {
		c.ctr.carriedUnopenable.Add(1)
		return nil, nil, false
	}
	r, ok = adm.AdmitCarried(id, r)
	if !ok {
		c.ctr.carriedRefused.Add(1)
		return nil, nil, false
	}
	expires, err := c.insertRecord(id, r, OriginLoader)
	if err != nil {
		// Expired, revoked, or malformed: the farm's copy, if any, decides.
		c.ctr.carriedRefused.Add(1)
		return nil, nil, false
	}
	r.Expires = time.Unix(0, expires)
	c.ctr.carriedAdmitted.Add(1)
	return &r, ss, false
}

// carryAgainAge is how long after a session's issue a handshake that
// resumes it and keeps it (a TLS 1.2 resumption, see keepsSession) gives
// the client a carried ticket for it rather than a reissued bare ID: long
// enough to cover a farm's young window (farm.Config.WriteThroughTimeout,
// 250ms by default) with room for skew, short enough that a client that
// keeps resuming does not carry its secrets in every ticket.
const carryAgainAge = time.Second

// carryAgain returns, for a handshake that resumed the cached session
// h.last and keeps it, a fresh carried ticket for it while carried tickets
// are on and the session was issued less than carryAgainAge ago; nil
// otherwise (a reissued ID then does). Without it, a client that resumes a
// young session on one node and at once reconnects to a third, which has
// not heard of the session yet, would present a bare ID there and wait for
// the farm's message. The ticket seals the session as the cache holds it
// (h.last.ss, parsed from the cache's state), so a node that admits the
// copy holds the same state as the farm's broadcast brings; it names no
// parent (the session's issuer's copy and message cut it).
func (c *Cache) carryAgain(cs tls.ConnectionState, h *handshake, now int64) []byte {
	if h.src == nil || !c.life.carry.Load() || c.cfg.Mode != Stateful || c.cfg.SingleUse || h.last.ss == nil {
		return nil
	}
	issued, ok := c.IssuedAt(h.last.id)
	if !ok || now-issued.UnixNano() >= int64(carryAgainAge) || issued.UnixNano()-now > c.maxSkew.Load() {
		return nil
	}
	var none ID
	return c.carried(cs, h.last.ss, h.src, &h.ticket, &h.last.id, &none, h.last.chain, h.last.chainStart, now, h.last.expires)
}
