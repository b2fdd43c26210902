package session

import (
	"context"
	"crypto/aes"
	"crypto/tls"
	"net"
	"slices"
	"strings"
	"time"
	"unique"
)

// Install installs the cache in cfg, a server's configuration: the tickets
// and PSK identities of handshakes that use cfg are then issued and resumed
// by the cache. It is the one way to use a cache with crypto/tls.
//
// Install sets cfg.GetConfigForClient to a function that calls the one cfg
// had before (if any) and returns a clone of its result (or of cfg) whose
// WrapSession and UnwrapSession are bound to that handshake, so that the two
// crypto/tls calls of a handshake (UnwrapSession when the client offers a
// ticket, WrapSession when the server issues one) are linked. The link lets
// a ticket issued by a resumed handshake inherit its chain (see
// Config.MaxChainLifetime), shortens the resumed session to
// Config.ResumeGrace, and makes Config.SingleUse possible. The clone costs
// one tls.Config copy per handshake.
//
// In Stateless and Mixed mode, tickets are encrypted and decrypted with the
// session ticket keys of the config being cloned: register every config that
// GetConfigForClient can return with the ticket key ring.
//
// Install also sets cfg.WrapSession and cfg.UnwrapSession, for a
// configuration used without GetConfigForClient (as QUIC servers may): those
// do not know whether a handshake resumed, so each ticket starts a new
// chain, resumed sessions keep their full lifetime, only session IDs are
// issued and accepted, and a SingleUse cache resumes nothing there (no
// claim could be settled). Neither ever fails a handshake: an identity that is
// empty, forged, unknown, expired, revoked, or presented under another
// server name means a full handshake, and a session that cannot be stored
// gets a ticket that resumes nothing.
//
// Call Install once per config, after setting cfg.GetConfigForClient if you
// use it.
func (c *Cache) Install(cfg *tls.Config) {
	prev := cfg.GetConfigForClient
	cfg.WrapSession = c.wrapSession
	cfg.UnwrapSession = c.unwrapSession
	cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		src := cfg
		if prev != nil {
			x, err := prev(hello)
			if err != nil {
				return nil, err
			}
			if x != nil {
				src = x
			}
		}
		conn := hello.Conn
		if c.cfg.SingleUse && slices.Contains(hello.Extensions, extQUICTransportParameters) {
			// QUIC (quic-go gives the hello a stand-in net.Conn): no
			// tls.Conn will ever be reported to HandshakeComplete, so
			// the single-use claim must not wait for one.
			conn = nil
		}
		h := &handshake{c: c, src: src, conn: conn, ctx: hello.Context()}
		child := src.Clone()
		child.GetConfigForClient = nil
		child.WrapSession = h.wrap
		child.UnwrapSession = h.unwrap
		if c.cfg.SingleUse {
			verify := child.VerifyConnection
			child.VerifyConnection = func(cs tls.ConnectionState) error {
				if verify != nil {
					if err := verify(cs); err != nil {
						return err
					}
				}
				// The handshake resumes the last session UnwrapSession
				// returned: the claimed one, unless a stateless ticket
				// (Mixed) came after a claimed session crypto/tls refused.
				if cl := h.claim; cs.DidResume && cl != nil && !h.last.ticket && h.last.id == cl.id && !cl.resume() {
					return errClaimExpired
				}
				return nil
			}
		}
		return child, nil
	}
}

// wrapSession is the tls.Config.WrapSession of a config used without its
// GetConfigForClient: it stores the session in the cache, starting a new
// chain, and returns its ID as the ticket.
// extQUICTransportParameters is the TLS extension that only a QUIC client
// hello carries (RFC 9001, section 8.2).
const extQUICTransportParameters = 0x39

func (c *Cache) wrapSession(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
	now := c.nowNano()
	return c.issue(cs, ss, nil, nil, 0, now, now, ID{}), nil
}

// unwrapSession is the tls.Config.UnwrapSession of a config used without its
// GetConfigForClient: it looks session IDs up in the cache.
func (c *Cache) unwrapSession(identity []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
	if c.cfg.SingleUse && len(identity) > 0 {
		// No claim could be settled without the handshake: nothing
		// would retire the session, and it would resume again and again.
		c.life.busy.Add(1)
		return nil, nil
	}
	tmp := blockPool.Get().(*[aes.BlockSize]byte)
	r := c.unwrap(context.Background(), identity, cs, nil, tmp)
	blockPool.Put(tmp)
	return r.ss, nil
}

// handshake is the state shared by the two crypto/tls calls of one
// handshake, bound to the per-handshake config made by Install.
type handshake struct {
	c    *Cache
	src  *tls.Config
	conn net.Conn
	ctx  context.Context
	last unwrapped // the last session UnwrapSession returned
	// claim is the single-use claim this handshake holds, if any;
	// VerifyConnection marks it when the handshake resumes its session.
	claim  *claim
	tmp    [aes.BlockSize]byte
	ticket ticketScratch
}

// ticketScratch is room for the binding of a stateless ticket (see
// Cache.issue), so that issuing one allocates only what crypto/tls's
// sealing does; a server name longer than bind leaves room for takes a
// buffer of its own.
type ticketScratch struct {
	extra [1][]byte
	bind  [80]byte // a binding for a server name of up to 38 bytes
}

// buf returns an empty buffer for a binding of capacity n: sc's room when it
// fits, a new one otherwise.
func (sc *ticketScratch) buf(n int) []byte {
	if sc != nil && n <= len(sc.bind) {
		return sc.bind[:0]
	}
	return make([]byte, 0, n)
}

// unwrapped is what UnwrapSession learned of the session it returned.
type unwrapped struct {
	ss         *tls.SessionState
	id         ID
	ticket     bool // a stateless ticket, not a cached session
	chain      uint64
	chainStart int64
	expires    int64  // cached sessions only
	state      []byte // cached sessions only
	serverName string // cached sessions only
}

func (h *handshake) unwrap(identity []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
	c := h.c
	r := c.unwrap(h.ctx, identity, cs, h.src, &h.tmp)
	if r.ss != nil && !r.ticket && c.cfg.SingleUse {
		// Single use: claim the session before crypto/tls may resume it
		// (see Farm). A second call of the same handshake (after a
		// HelloRetryRequest) keeps its claim.
		if h.claim == nil || h.claim.id != r.id {
			if !keyable(h.conn) && (h.ctx == nil || h.ctx.Done() == nil) {
				// Neither HandshakeComplete nor the end of the
				// handshake would settle a claim: a full handshake.
				c.life.busy.Add(1)
				return nil, nil
			}
			if h.claim != nil {
				if keyable(h.conn) {
					c.pending.CompareAndDelete(h.conn, h.claim)
				}
				h.claim.release()
				h.claim = nil
			}
			cl := c.takeClaim(h.ctx, r.id, Record{State: r.state, ServerName: r.serverName,
				Expires: time.Unix(0, r.expires), Chain: r.chain, ChainStart: time.Unix(0, r.chainStart)})
			if cl == nil {
				return nil, nil
			}
			h.claim = cl
			h.watch(cl)
		}
	}
	if r.ss != nil {
		// crypto/tls stops at the first session it accepts, so if the
		// handshake resumes, it resumes the last one returned.
		h.last = r
	}
	return r.ss, nil
}

func (h *handshake) wrap(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
	c := h.c
	now := c.nowNano()
	chain, start := uint64(0), now
	var parent ID
	if cs.DidResume && h.last.ss != nil {
		chain, start = h.last.chain, h.last.chainStart
		if !h.last.ticket && c.keepsSession(cs, &h.last, now) {
			if t := c.carryAgain(cs, h, now); t != nil {
				return t, nil
			}
			if t := c.keys.Load().reissue(&h.last.id); t != nil {
				c.ctr.reissued.Add(1)
				return t, nil
			}
		}
		if !h.last.ticket {
			parent = h.last.id
			if c.cfg.ResumeGrace > 0 {
				c.shorten(&h.last.id, now+int64(c.cfg.ResumeGrace))
			}
		}
	}
	return c.issue(cs, ss, h.src, &h.ticket, chain, start, now, parent), nil
}

// keepsSession reports whether a handshake that resumed the cached session r
// is given a reissued ticket for it rather than a successor: TLS 1.2 (whose
// resumption keeps the master secret, so a successor would be the same
// secret stored and shared again), not single use (which retires r), and
// only while a successor would not outlive r by half a Lifetime or more.
// So an active client's session is renewed about once per half Lifetime,
// not once per connection, and a farm shares nothing for the handshakes in
// between.
func (c *Cache) keepsSession(cs tls.ConnectionState, r *unwrapped, now int64) bool {
	if cs.Version >= tls.VersionTLS13 || c.cfg.SingleUse {
		return false
	}
	successor := min(now+int64(c.cfg.Lifetime), r.chainStart+int64(c.cfg.MaxChainLifetime))
	return successor-r.expires < int64(c.cfg.Lifetime)/2
}

// issue returns the ticket for ss: a stateless ticket in Stateless mode (when
// a config to encrypt with is known), otherwise the ID of a new cache entry.
// sc, if not nil, is scratch space for a stateless ticket's binding.
func (c *Cache) issue(cs tls.ConnectionState, ss *tls.SessionState, src *tls.Config, sc *ticketScratch, chain uint64, start, now int64, parent ID) []byte {
	if chain == 0 {
		chain = newChain()
	}
	fallback := c.fallbackLifetime()
	if src != nil && (c.cfg.Mode == Stateless || fallback > 0) {
		b := sc.buf(bindingCap(cs.ServerName))
		if c.cfg.Mode == Stateless {
			b = appendBinding(b, cs.ServerName, chain, start, now)
		} else {
			// The farm is unreachable: a short-lived ticket under the
			// farm's keys resumes on any node meanwhile.
			b = appendFallbackBinding(b, cs.ServerName, chain, start, now, now+int64(fallback))
		}
		t, err := sealBound(cs, ss, src, sc, b)
		if err == nil {
			c.ctr.ticketsIssued.Add(1)
			if c.cfg.Mode != Stateless {
				c.life.fallbackIssued.Add(1)
			}
			return t
		}
		// Fall back to a cached session.
	}
	id := c.NewID()
	name := strings.ToLower(cs.ServerName) // as long as cs.ServerName if ASCII
	if len(name) > maxServerNameLen {
		// No record could carry it to the farm: the client gets a ticket
		// that resumes nothing, and its next handshake is a full one.
		c.ctr.wrapErrors.Add(1)
		return id[:]
	}
	state, err := ss.Bytes()
	if err != nil {
		c.ctr.wrapErrors.Add(1)
		return id[:]
	}
	e := &entry{
		id:         id,
		state:      state,
		serverName: unique.Make(name),
		chain:      chain,
		expires:    min(now+int64(c.cfg.Lifetime), start+int64(c.cfg.MaxChainLifetime)),
		chainStart: start,
	}
	// A revoked chain is refused: the ticket then resumes nothing.
	expires, err := c.insert(e, OriginHandshake, now, parent)
	if err == nil && parent != (ID{}) {
		c.linkChild(parent, id, expires, c.graceEnd(now, expires), OriginHandshake)
	}
	if err == nil && src != nil && c.life.carry.Load() && c.cfg.Mode == Stateful && !c.cfg.SingleUse {
		if t := c.carried(cs, ss, src, sc, &id, &parent, chain, start, now, expires); t != nil {
			return t
		}
	}
	return id[:]
}

// unwrap resolves a presented identity to a session, or to nothing.
// tmp is scratch space for the ID check.
func (c *Cache) unwrap(ctx context.Context, identity []byte, cs tls.ConnectionState, src *tls.Config, tmp *[aes.BlockSize]byte) unwrapped {
	var r unwrapped
	if len(identity) == 0 {
		return r // a TLS 1.2 hello without a ticket
	}
	var id ID
	var carried []byte // a carried ticket's sealed session
	switch {
	case len(identity) >= carriedMin && identity[0] == carriedVersion && c.keys.Load().check(identity[1:1+IDLen], tmp):
		// Checked by its ID, as a bare ID is; the sealed session is
		// opened only if the cache does not hold the ID. One that fails
		// the check may be a stateless ticket whose first byte is the
		// version's by chance (1 in 256): below.
		id = ID(identity[1 : 1+IDLen])
		carried = identity[1+IDLen:]
	case len(identity) == IDLen && identity[0] == idVersion:
		if !c.keys.Load().check(identity, tmp) {
			c.ctr.forgedIDs.Add(1)
			return r
		}
		id = ID(identity)
	case len(identity) == reissuedLen && identity[0] == reissuedVersion && c.keys.Load().openReissued(identity, &id, tmp):
	case (c.cfg.Mode != Stateful || c.life.acceptTickets.Load()) && src != nil:
		return c.unwrapTicket(identity, cs, src)
	default:
		c.ctr.forgedIDs.Add(1)
		return r
	}
	var state []byte
	var sni unique.Handle[string]
	var h hit
	var admitted *tls.SessionState // a carried copy's session, parsed (admitCarried)
	found := c.get(&id, OriginHandshake, func(e *entry) {
		state, sni, r.chain, r.chainStart, r.expires = e.state, e.serverName, e.chain, e.chainStart, e.expires
	}, &h)
	serverName := ""
	if found {
		serverName = sni.Value()
	} else {
		var rec *Record
		if carried != nil {
			var refused bool
			if rec, admitted, refused = c.admitCarried(id, carried, cs, src); refused {
				return r
			}
		}
		if rec == nil {
			rec = c.load(ctx, id)
		}
		if rec == nil {
			return r
		}
		state, serverName, r.chain, r.chainStart = rec.State, strings.ToLower(rec.ServerName), rec.Chain, rec.ChainStart.UnixNano()
		r.expires = rec.Expires.UnixNano()
	}
	if !c.cfg.AllowServerNameMismatch && !strings.EqualFold(serverName, cs.ServerName) {
		c.ctr.refusedSNI.Add(1)
		if found && h.hooked {
			c.got(&id, OriginHandshake, &h, true) // found, refused for its name
		}
		return r
	}
	ss := admitted
	if ss == nil {
		var err error
		if ss, err = tls.ParseSessionState(state); err != nil {
			c.ctr.parseErrors.Add(1)
			if found {
				c.got(&id, OriginHandshake, &h, false)
			}
			return r
		}
	}
	if found && !c.hitConfirmed(ctx, &id, r.chain) {
		// Held back by the farm (see HitChecker): as good as a miss.
		c.ctr.hitsHeldBack.Add(1)
		c.got(&id, OriginHandshake, &h, false)
		return r
	}
	if found && h.hooked {
		c.got(&id, OriginHandshake, &h, true)
	}
	r.ss, r.id, r.state, r.serverName = ss, id, state, serverName
	return r
}

// hitConfirmed reports whether the session id of chain, which the cache
// holds, may resume as far as the farm the cache joined is concerned (see
// HitChecker): at once while the farm reports its messages current, else
// once it confirms the session, within Join's timeout.
func (c *Cache) hitConfirmed(ctx context.Context, id *ID, chain uint64) bool {
	box := c.farm.Load()
	if box == nil || box.hc == nil || c.cfg.SingleUse || box.hc.HitsCurrent() {
		return true
	}
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, box.timeout)
	defer cancel()
	return box.hc.CheckHit(ctx, *id, chain)
}

// load asks the Farm the cache joined for id, and inserts what it returns.
func (c *Cache) load(ctx context.Context, id ID) *Record {
	box := c.farm.Load()
	if box == nil {
		return nil
	}
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, box.timeout)
	rec, err := box.f.Load(ctx, id)
	cancel()
	switch {
	case err != nil:
		c.ctr.loaderErrors.Add(1)
		return nil
	case rec == nil:
		c.ctr.loaderMisses.Add(1)
		return nil
	}
	// As Insert takes it: the handshake's successor continues the chain
	// from the start the cache holds.
	rec.ChainStart = time.Unix(0, chainStartNano(rec.ChainStart, c.nowNano()))
	if rec.Chain == 0 {
		// Drawn here, not by Insert: the handshake's successor must
		// continue the chain the cache holds the session in.
		rec.Chain = newChain()
	}
	expires, err := c.insertRecord(id, *rec, OriginLoader)
	if err != nil {
		// Expired, revoked, forged or malformed: as good as a miss.
		c.ctr.loaderMisses.Add(1)
		return nil
	}
	// The handshake goes on with the life the cache gave the session
	// (a peer's record may claim more than its ID allows, see Insert):
	// it decides on a reissued ticket by it, and a released single-use
	// claim puts it back in the farm.
	rec.Expires = time.Unix(0, expires)
	c.ctr.loaderHits.Add(1)
	return rec
}

// sealBound seals ss under src's session ticket keys with the binding b
// added to its Extra for the ticket only: ss is left as crypto/tls made
// it, and sc (if not nil) holds the Extra slice meanwhile, so that it can
// be used again.
func sealBound(cs tls.ConnectionState, ss *tls.SessionState, src *tls.Config, sc *ticketScratch, b []byte) ([]byte, error) {
	extra := ss.Extra
	if len(extra) == 0 && sc != nil {
		sc.extra[0] = b
		ss.Extra = sc.extra[:]
	} else {
		ss.Extra = append(extra[:len(extra):len(extra)], b)
	}
	t, err := src.EncryptTicket(cs, ss)
	ss.Extra = extra
	return t, err
}
