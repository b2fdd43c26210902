package session

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math"
	"math/bits"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unique"
)

// The errors Cache.Insert returns. No caller branches on them: their text
// says why a record was refused.
var (
	errForgedID = errors.New("session: ID is not authenticated by any ID key")
	errExpired  = errors.New("session: record has already expired")
	errRevoked  = errors.New("session: record belongs to a revoked chain")

	// errInvalidRecord is returned, wrapped with what is wrong, for a
	// record the cache cannot hold: one without state, one whose state is
	// longer than Config.MaxStateLen, one whose server name is longer
	// than maxServerNameLen in lower case (which no record's binary form
	// holds), and one that names its own session as its parent.
	errInvalidRecord = errors.New("session: invalid record")

	errEmptyState    = fmt.Errorf("%w: no session state", errInvalidRecord)
	errStateLen      = fmt.Errorf("%w: session state is longer than Config.MaxStateLen", errInvalidRecord)
	errServerNameLen = fmt.Errorf("%w: server name is longer than 253 bytes in lower case", errInvalidRecord)
	errOwnParent     = fmt.Errorf("%w: record names its own session as its parent", errInvalidRecord)
)

// A Cache is a server-side TLS session cache with a plugin hook API. It is
// safe for concurrent use. Use New to make one and Close to stop its sweep.
type Cache struct {
	cfg     Config
	buckets []bucket
	mask    uint64
	seed    maphash.Seed
	hmask   uint64 // applied to every ID's hash: all ones, except in a test of hash collisions

	size  atomic.Int64 // sessions held, across buckets
	keys  atomic.Pointer[idKeys]
	hooks atomic.Pointer[[]*hook]
	hmu   sync.Mutex // serializes hook list changes

	// restricted counts the changes that may shorten what a read of a
	// session found (see Restrictions).
	restricted atomic.Uint64

	farm    atomic.Pointer[farmBox]
	tomb    tombstones
	pending sync.Map // net.Conn -> *claim, for SingleUse
	life    lifecycle

	// maxSkew is Config.MaxClockSkew in nanoseconds, which
	// SetDefaultClockSkew changes unless Config set it (skewSet).
	maxSkew atomic.Int64
	skewSet bool

	panicLogged atomic.Bool
	reported    atomic.Bool // the server calls HandshakeComplete
	ctr         counters

	stop      chan struct{}
	done      chan struct{}
	sweeping  atomic.Bool // the background goroutine is in a sweep
	closeOnce sync.Once
}

type bucket struct {
	mu sync.Mutex
	// m holds the bucket's sessions by the hash of their ID (Cache.hash),
	// more those whose hash another session in m already has, which a
	// random 64-bit hash makes so rare that more is nil but in tests. A
	// uint64 key makes m's slots 16 bytes instead of 40, so that it grows,
	// and is scanned, for less than half the memory.
	m     map[uint64]*entry
	more  map[ID]*entry
	root  entry // sentinel: root.next is the most recently used
	stats bucketStats
	_     [64]byte // keep neighbouring buckets' locks off one cache line
}

type entry struct {
	id         ID
	prev, next *entry
	state      []byte
	serverName unique.Handle[string]
	chain      uint64
	expires    int64 // Unix nanoseconds
	chainStart int64 // Unix nanoseconds
}

// New returns a cache configured by cfg, which may be nil for all defaults.
// It returns an error only for an unknown Config.Mode, and for SingleUse in
// Stateless mode. The cache mints and
// checks IDs under a random key of its own until SetIDKeys gives it others.
func New(cfg *Config) (*Cache, error) {
	var c Cache
	if cfg != nil {
		c.cfg = *cfg
	}
	cf := &c.cfg
	if cf.Capacity <= 0 {
		cf.Capacity = defaultCapacity
	}
	if cf.Buckets <= 0 {
		cf.Buckets = defaultBuckets
	}
	// Cut to the capacity before rounding up: rounding a larger count
	// could overflow.
	cf.Buckets = min(cf.Buckets, cf.Capacity)
	cf.Buckets = 1 << bits.Len(uint(cf.Buckets-1))
	if cf.Buckets > cf.Capacity {
		cf.Buckets = 1 << (bits.Len(uint(cf.Capacity)) - 1)
	}
	if cf.Lifetime <= 0 {
		cf.Lifetime = defaultLifetime
	}
	if cf.MaxChainLifetime <= 0 {
		cf.MaxChainLifetime = defaultMaxChainLifetime
	}
	if cf.ResumeGrace == 0 {
		cf.ResumeGrace = defaultResumeGrace
	}
	cf.Lifetime = min(cf.Lifetime, maxDuration)
	cf.MaxChainLifetime = min(cf.MaxChainLifetime, maxDuration)
	cf.ResumeGrace = min(cf.ResumeGrace, maxDuration)
	if cf.SweepInterval == 0 {
		cf.SweepInterval = defaultSweepInterval
	}
	if cf.MaxStateLen <= 0 {
		cf.MaxStateLen = defaultMaxStateLen
	}
	if cf.Logger == nil {
		cf.Logger = slog.Default()
	}
	c.skewSet = cf.MaxClockSkew > 0
	if !c.skewSet {
		cf.MaxClockSkew = defaultMaxClockSkew
	}
	c.maxSkew.Store(int64(cf.MaxClockSkew))
	if cf.Now == nil {
		cf.Now = time.Now
	}
	if cf.pendingTTL <= 0 {
		cf.pendingTTL = pendingTTL
	}
	if cf.Mode > Mixed {
		return nil, fmt.Errorf("session: unknown mode %d", cf.Mode)
	}
	if cf.SingleUse && cf.Mode == Stateless {
		// Stateless tickets are not held, so none could be retired.
		return nil, errors.New("session: SingleUse needs the Stateful or Mixed mode: a stateless ticket cannot be retired")
	}
	k, err := newIDKeys([]IDKey{randomIDKey()})
	if err != nil {
		return nil, err
	}
	c.keys.Store(k)

	c.seed = maphash.MakeSeed()
	c.hmask = ^uint64(0)
	c.mask = uint64(cf.Buckets - 1)
	c.buckets = make([]bucket, cf.Buckets)
	for i := range c.buckets {
		b := &c.buckets[i]
		b.m = make(map[uint64]*entry)
		b.root.next, b.root.prev = &b.root, &b.root
	}
	c.tomb.m = make(map[uint64]int64)
	c.stop = make(chan struct{})
	c.done = make(chan struct{})
	go c.background()
	return &c, nil
}

// Config returns the cache's configuration, its zero fields replaced by
// their defaults. A farm reads what it must do alike from it, such as
// ResumeGrace and SingleUse.
func (c *Cache) Config() Config {
	cfg := c.cfg
	cfg.MaxClockSkew = time.Duration(c.maxSkew.Load())
	return cfg
}

// SetDefaultClockSkew makes d (if > 0) the cache's MaxClockSkew, unless its
// Config set one, and returns the bound now in force. farm.Join calls it
// with the farm's MaxSkew, so that a node allows its peers' stateless
// tickets the clock difference it allows their messages; the bound stays
// after the node closes.
func (c *Cache) SetDefaultClockSkew(d time.Duration) time.Duration {
	if d > 0 && !c.skewSet {
		c.maxSkew.Store(int64(d))
	}
	return time.Duration(c.maxSkew.Load())
}

// Close stops the background sweep. The cache stays usable. Close waits
// for the background goroutine to end, unless it is in a sweep: the sweep
// fires hooks, which may call Close, and then ends after Close returns.
func (c *Cache) Close() error {
	c.closeOnce.Do(func() { close(c.stop) })
	if !c.sweeping.Load() {
		<-c.done
	}
	return nil
}

// hash returns the hash of id that picks its bucket and is its key there.
func (c *Cache) hash(id *ID) uint64 { return maphash.Bytes(c.seed, id[:]) & c.hmask }

// bucket returns the bucket of id and the hash of id.
func (c *Cache) bucket(id *ID) (*bucket, uint64) {
	h := c.hash(id)
	return &c.buckets[h&c.mask], h
}

// find returns the session id, whose hash is h, or nil; b.mu is held.
func (b *bucket) find(id *ID, h uint64) *entry {
	e, _ := b.lookup(id, h)
	return e
}

// lookup returns the session id, whose hash is h, or nil, and whether a
// session holds h in m; b.mu is held.
func (b *bucket) lookup(id *ID, h uint64) (e *entry, taken bool) {
	e = b.m[h]
	if e != nil && e.id == *id {
		return e, true
	}
	taken = e != nil
	if b.more != nil {
		return b.more[*id], taken
	}
	return nil, taken
}

// add adds e, whose ID's hash is h and which b does not hold, given whether
// a session holds h in m; b.mu is held.
func (b *bucket) add(e *entry, h uint64, taken bool) {
	if !taken {
		b.m[h] = e
		return
	}
	if b.more == nil {
		b.more = make(map[ID]*entry)
	}
	b.more[e.id] = e
}

// remove removes e, whose ID's hash is h, from the maps; b.mu is held.
func (b *bucket) remove(e *entry, h uint64) {
	if b.m[h] == e {
		delete(b.m, h)
		return
	}
	delete(b.more, e.id)
	if len(b.more) == 0 {
		b.more = nil
	}
}

// nowNano returns the time in Unix nanoseconds, from Config.Now. (A coarse
// clock advanced by a ticker saved the ≈60 ns of a time.Now per lookup, but
// its 500 wake-ups a second cost a server ≈30 ms of CPU a second, idle or
// not: more than it saved below some 500,000 lookups a second.)
func (c *Cache) nowNano() int64 { return c.cfg.Now().UnixNano() }

// Get returns the session id as a new tls.SessionState that the caller owns,
// firing EventGet with OriginAPI. It reports false if the session is absent,
// expired, or cannot be parsed; a session that cannot be parsed counts as a
// miss, and its EventGet has no record, as for an absent one.
func (c *Cache) Get(id ID) (*tls.SessionState, bool) {
	var state []byte
	var h hit
	if !c.get(&id, OriginAPI, func(e *entry) { state = e.state }, &h) {
		return nil, false
	}
	// A copy: the SessionState's byte slices (Extra, the secret) alias
	// what it is parsed from, and the caller owns it.
	s, err := tls.ParseSessionState(bytes.Clone(state))
	if err != nil {
		c.ctr.parseErrors.Add(1)
		c.got(&id, OriginAPI, &h, false)
		return nil, false
	}
	if h.hooked {
		c.got(&id, OriginAPI, &h, true)
	}
	return s, true
}

// GetBuffer copies the serialized session id (as made by
// tls.SessionState.Bytes) into buf and returns its full length, firing
// EventGet with OriginAPI. If n > len(buf), buf was too short and holds only
// the first len(buf) bytes: call again with a buffer of n bytes. It reports
// false, with n == 0, if the session is absent or expired.
func (c *Cache) GetBuffer(id ID, buf []byte) (n int, ok bool) {
	ok = c.get(&id, OriginAPI, func(e *entry) {
		n = len(e.state)
		copy(buf, e.state)
	}, nil)
	return n, ok
}

// A hit is a session that get found, whose EventGet is yet to fire.
type hit struct {
	r      Record
	hooked bool // hooks were registered: r is set
}

// get finds id, marks it most recently used, calls fn on it under the
// bucket lock, and fires the events the lookup caused; but if out is not
// nil, the EventGet of a session found is left in out, for the caller to
// fire by calling got once it knows whether the session is usable (its
// state parses).
func (c *Cache) get(id *ID, origin Origin, fn func(*entry), out *hit) bool {
	now := c.nowNano()
	b, h := c.bucket(id)
	var expired *entry
	b.mu.Lock()
	e := b.find(id, h)
	if e != nil && e.expires <= now {
		c.unlink(b, e, h)
		b.stats.removed[Expired]++
		expired, e = e, nil
	}
	if e != nil && c.tomb.scans.Load() != 0 && c.tomb.revoked(e.chain, now) {
		// A revocation's scan has yet to reach this bucket: the session
		// is as good as gone. The scan removes it and fires its event.
		e = nil
	}
	if e == nil {
		b.stats.misses++
		b.mu.Unlock()
	} else {
		b.stats.hits++
		b.toFront(e)
		fn(e)
		if c.hooks.Load() == nil {
			b.mu.Unlock()
			return true
		}
		r := e.record()
		b.mu.Unlock()
		if out != nil {
			out.r, out.hooked = r, true
			return true
		}
		c.fire(Event{Kind: EventGet, ID: *id, Origin: origin, Record: r})
		return true
	}
	if c.hooks.Load() != nil {
		if expired != nil {
			c.fire(Event{Kind: EventRemove, ID: *id, Origin: origin, Reason: Expired, Record: expired.record()})
		}
		c.fire(Event{Kind: EventGet, ID: *id, Origin: origin})
	}
	return false
}

// got fires the EventGet of h, a session get found. If the session is not
// usable (its state does not parse), the lookup is counted as a miss and
// its EventGet has no record, as for a session not found. For a usable
// session, callers skip the call unless h.hooked.
func (c *Cache) got(id *ID, origin Origin, h *hit, usable bool) {
	if !usable {
		// Moved from hits to misses in the bucket's own counts, under
		// its lock, so that a scrape sees it as one or the other (the
		// hit it may have seen meanwhile is kept: see reportedHits).
		b, _ := c.bucket(id)
		b.mu.Lock()
		b.stats.hits--
		b.stats.misses++
		b.mu.Unlock()
		h.r = Record{}
	}
	if h.hooked {
		c.fire(Event{Kind: EventGet, ID: *id, Origin: origin, Record: h.r})
	}
}

// Insert adds the session id with record r, or replaces the record of an
// existing session id (firing EventNew, and no EventRemove). The insert is
// atomic: a concurrent lookup sees the old record or the new one. If the
// bucket is full, its least recently used session is evicted (EventRemove
// with Evicted). origin is reported in the events; a plugin passes
// OriginPeer for sessions received from other servers, so that it and
// other plugins do not send them back out.
//
// A record with the state the cache holds for id is the same session
// again, and does not lengthen it: it keeps the earlier of the two
// expiries, so that a copy written before the cache cut the session (Cut,
// or Config.ResumeGrace) cannot undo the cut; Insert refuses it as expired
// if that expiry has passed. A session no longer cached, such as a retired
// single-use one, the cache cannot tell from a new one: a plugin that may
// deliver a session again after it left must remember that itself, as
// package farm does.
//
// Insert refuses, with an error that says why, an ID not authenticated by
// the cache's ID keys, a record without state or with state longer than
// MaxStateLen, one whose server name is longer than 253 bytes (the DNS
// limit) in lower case, one whose Parent is id, one that has already
// expired, and one whose chain has been revoked. A zero r.ChainStart means
// now, and so does one later than now: a chain cannot have begun in the
// future, and the session lives no longer than its chain's start plus
// MaxChainLifetime. A zero r.Chain draws a new chain. Insert keeps its own copy of nothing:
// r.State must not be modified afterwards.
func (c *Cache) Insert(id ID, r Record, origin Origin) error {
	_, err := c.insertRecord(id, r, origin)
	return err
}

// insertRecord is Insert; it also returns the expiry the cache gave the
// session (Unix nanoseconds), which the bounds above may have cut.
func (c *Cache) insertRecord(id ID, r Record, origin Origin) (int64, error) {
	k := c.keys.Load()
	if !k.checkPooled(id[:]) {
		c.ctr.forgedIDs.Add(1)
		return 0, errForgedID
	}
	if len(r.State) == 0 {
		return 0, errEmptyState
	}
	if len(r.State) > c.cfg.MaxStateLen {
		c.ctr.oversized.Add(1)
		return 0, errStateLen
	}
	if r.Parent == id {
		return 0, errOwnParent
	}
	if len(r.ServerName) > maxServerNameLen {
		return 0, errServerNameLen
	}
	// In lower case, a name may be longer (invalid UTF-8 triples).
	name := strings.ToLower(r.ServerName)
	if len(name) > maxServerNameLen {
		return 0, errServerNameLen
	}
	now := c.nowNano()
	e := &entry{
		id:         id,
		state:      r.State,
		serverName: unique.Make(name),
		chain:      r.Chain,
		expires:    unixNano(r.Expires),
		chainStart: chainStartNano(r.ChainStart, now),
	}
	if r.Chain == 0 {
		e.chain = newChain()
	}
	if lim := e.chainStart + int64(c.cfg.MaxChainLifetime); e.expires > lim {
		e.expires = lim
	}
	issued := k.issuedAt(&id)
	if lim, ok := c.lifeEnd(issued, now); e.expires > lim {
		// A record that claims more than its ID allows: a peer with a
		// longer Lifetime, or a record replayed with its expiry changed
		// (by a node that held the farm's secret).
		e.expires = lim
		if ok {
			c.ctr.lifeClamped.Add(1)
		}
	}
	if e.expires <= now {
		return 0, errExpired
	}
	expires, err := c.insert(e, origin, now, r.Parent)
	if err != nil {
		return 0, err
	}
	if r.Parent != (ID{}) {
		at := c.resumedAt(issued, expires, now)
		if c.cfg.ResumeGrace > 0 {
			c.shorten(&r.Parent, at+int64(c.cfg.ResumeGrace))
		}
		c.linkChild(r.Parent, id, expires, c.graceEnd(at, expires), origin)
	}
	return expires, nil
}

// Holds reports whether the cache holds the session id as inserting r
// would leave it, so that Insert(id, r, origin) would change nothing: the
// same state, server name, chain and chain start, live and of a chain not
// revoked, ending no later than r would (Insert keeps the earlier end of
// the same session), and, if r names a parent, that parent cut as the
// insert would cut it (or not held) and linked to id as its live child. A
// farm calls it for a peer's copy of a session it may hold already (a
// carried copy it admitted before the issuer's message came: see
// CarriedAdmitter), and then does not insert the copy again. It is a
// snapshot: the cache may change as soon as it returns.
func (c *Cache) Holds(id ID, r Record) bool {
	if r.Parent == id || len(r.State) == 0 {
		return false
	}
	now := c.nowNano()
	b, h := c.bucket(&id)
	b.mu.Lock()
	e := b.find(&id, h)
	if e == nil || e.expires <= now || e.chain != r.Chain || c.tomb.revoked(e.chain, now) ||
		e.chainStart != chainStartNano(r.ChainStart, now) || !bytes.Equal(e.state, r.State) {
		b.mu.Unlock()
		return false
	}
	held, start, name := e.expires, e.chainStart, e.serverName
	b.mu.Unlock()
	if name.Value() != strings.ToLower(r.ServerName) {
		return false
	}
	// The end insertRecord would give r (which it refuses if the ID's
	// key is no longer held).
	k := c.keys.Load()
	if !k.checkPooled(id[:]) {
		return false
	}
	expires := min(unixNano(r.Expires), start+int64(c.cfg.MaxChainLifetime))
	issued := k.issuedAt(&id)
	if lim, _ := c.lifeEnd(issued, now); expires > lim {
		expires = lim
	}
	if held > expires {
		return false // the insert would cut it
	}
	if r.Parent == (ID{}) {
		return true
	}
	// What the insert would do to the parent (insertRecord): cut it to
	// its grace from the child's issue, and link the child.
	at := c.resumedAt(issued, held, now)
	until := c.graceEnd(at, held)
	c.life.mu.Lock()
	link, ok := c.life.kids[r.Parent]
	c.life.mu.Unlock()
	if !ok || link.child != id || link.expires != held || link.until < until {
		return false
	}
	if c.cfg.ResumeGrace <= 0 {
		return true
	}
	pb, ph := c.bucket(&r.Parent)
	pb.mu.Lock()
	defer pb.mu.Unlock()
	p := pb.find(&r.Parent, ph)
	return p == nil || p.expires <= at+int64(c.cfg.ResumeGrace)
}

// Restrictions returns a count that grows whenever the cache may have
// shortened what a read of one of its sessions found: it cut a session
// (Cut, a resumption's grace cut, a child's insert), replaced or removed
// one (for any reason), or began to revoke chains. Two equal readings say
// that every session the cache held at the first, it holds at the second
// with the same record and not under revocation (an insert of a session
// it did not hold is not counted); anything the cache's callers did
// meanwhile (such as noting a resumption) is theirs to count. A farm
// reads it before it reads the sessions it is about to write, and again
// once the write is done, to know whether it must read them again.
func (c *Cache) Restrictions() uint64 { return c.restricted.Load() }

// Times that Unix nanoseconds hold, as an int64 does.
var (
	minNanoTime = time.Unix(0, math.MinInt64)
	maxNanoTime = time.Unix(0, math.MaxInt64)
)

// unixNano returns t in Unix nanoseconds, the earliest or the latest that
// an int64 holds for a time before 1678 or after 2262, for which
// t.UnixNano wraps around: a time later than any bound stays later.
func unixNano(t time.Time) int64 {
	switch {
	case t.Before(minNanoTime):
		return math.MinInt64
	case t.After(maxNanoTime):
		return math.MaxInt64
	}
	return t.UnixNano()
}

// chainStartNano returns the start of the chain of a record inserted at now
// whose ChainStart is start, in Unix nanoseconds, so that the chain ends by
// that plus MaxChainLifetime. A chain cannot start after now: a zero start
// means now, and a later one is taken as now, so that it cannot lengthen
// the chain. A start too early for Unix nanoseconds (whose UnixNano would
// wrap around) is taken as the earliest one: that chain has ended.
func chainStartNano(start time.Time, now int64) int64 {
	switch {
	case start.IsZero():
		return now
	case start.Before(minNanoTime):
		return math.MinInt64
	case start.After(maxNanoTime):
		return now
	}
	return min(start.UnixNano(), now)
}

// lifeEnd returns the latest a session inserted at now may live: the issue
// time its ID carries (issued) plus Lifetime, and a millisecond for the
// ID's precision, whoever minted it and whatever its record says. An issue
// time later than now (the minter's clock is ahead) counts as now, as a
// chain start later than now does, and so does one before 1970: an ID
// minted before IDs carried their issue time yields an arbitrary one, and
// only such an ID decodes to a negative one. ok reports whether the issue
// time was taken as the ID says (it was neither).
func (c *Cache) lifeEnd(issued time.Time, now int64) (end int64, ok bool) {
	at := now
	// Compared as times: an arbitrary one may be beyond what an int64 of
	// nanoseconds holds.
	if issued.Unix() >= 0 && !issued.After(time.Unix(0, now)) {
		at, ok = issued.UnixNano(), true
	}
	return at + int64(time.Millisecond) + int64(c.cfg.Lifetime), ok
}

// resumedAt returns when the parent of a session issued at issued (as its
// ID says), which expires at expires, was resumed: that issue time, which
// the handshake that resumed the parent minted it at, and not its arrival
// here (now), which someone who delays a peer's message would choose. It is no later than now (the
// issuer's clock may be ahead) and no earlier than expires less Lifetime
// (an ID minted before IDs carried their issue time yields an arbitrary
// one).
func (c *Cache) resumedAt(issued time.Time, expires, now int64) int64 {
	at := unixNano(issued)
	return min(now, max(at, expires-int64(c.cfg.Lifetime)))
}

// insert adds e, and returns the expiry the cache holds it with: e's, or,
// if e replaces a session of the same ID and state that expires earlier (a
// session the cache cut, see Cut and Config.ResumeGrace), that one's.
// parent is reported in the EventNew record.
func (c *Cache) insert(e *entry, origin Origin, now int64, parent ID) (int64, error) {
	if c.tomb.revoked(e.chain, now) {
		c.ctr.revokedInserts.Add(1)
		return 0, errRevoked
	}
	b, h := c.bucket(&e.id)
	var victim *entry
	var reason RemoveReason
	over := false // the cache holds more than Capacity after the insert
	b.mu.Lock()
	// Again under the bucket's lock: a RemoveChain that tombstoned the
	// chain since the check above may have scanned this bucket already,
	// and would not see the entry. (One that tombstones it from here on
	// scans this bucket after the insert.)
	if c.tomb.revoked(e.chain, now) {
		b.mu.Unlock()
		c.ctr.revokedInserts.Add(1)
		return 0, errRevoked
	}
	old, taken := b.lookup(&e.id, h)
	if old != nil && old.expires < e.expires && bytes.Equal(old.state, e.state) {
		// The same session again (a peer's or the store's copy, which
		// may have been written before the cache cut it): it keeps the
		// end the cache gave it. Another state under the ID is another
		// session, and replaces it whole.
		if old.expires <= now {
			b.mu.Unlock()
			return 0, errExpired
		}
		e.expires = old.expires
	}
	expires := e.expires
	if old != nil {
		c.restricted.Add(1)
		old.state, old.serverName, old.chain = e.state, e.serverName, e.chain
		old.expires, old.chainStart = e.expires, e.chainStart
		b.toFront(old)
		e = old
	} else {
		if c.size.Load() >= int64(c.cfg.Capacity) && b.root.prev != &b.root {
			victim = b.root.prev
			reason = Evicted
			if victim.expires <= now {
				reason = Expired
			}
			vh := c.hash(&victim.id)
			c.unlink(b, victim, vh)
			b.stats.removed[reason]++
			if vh == h {
				taken = b.m[h] != nil
			}
		}
		b.add(e, h, taken)
		b.pushFront(e)
		over = c.size.Add(1) > int64(c.cfg.Capacity)
	}
	b.stats.inserts++
	if c.hooks.Load() == nil {
		b.mu.Unlock()
		if over {
			c.evictOver(h&c.mask, origin, now)
		}
		return expires, nil
	}
	r := e.record()
	r.Parent = parent
	var vr Record
	if victim != nil {
		vr = victim.record()
	}
	b.mu.Unlock()
	if victim != nil {
		c.fire(Event{Kind: EventRemove, ID: victim.id, Origin: origin, Reason: reason, Record: vr})
	}
	c.fire(Event{Kind: EventNew, ID: e.id, Origin: origin, Record: r})
	if over {
		c.evictOver(h&c.mask, origin, now)
	}
	return expires, nil
}

// evictOver evicts the least recently used session of each bucket after
// the i-th in turn, while the cache holds more than Capacity sessions. An
// insert into a full cache evicts in its own bucket, which may hold no
// other session (most of a small cache's buckets hold one or none), and
// concurrent inserts into different buckets may all take the last free
// place: without this, the cache would grow past its Capacity by up to a
// session per bucket.
func (c *Cache) evictOver(i uint64, origin Origin, now int64) {
	for range c.buckets {
		if c.size.Load() <= int64(c.cfg.Capacity) {
			return
		}
		i = (i + 1) & c.mask
		b := &c.buckets[i]
		b.mu.Lock()
		victim := b.root.prev
		if victim == &b.root || c.size.Load() <= int64(c.cfg.Capacity) {
			b.mu.Unlock()
			continue
		}
		reason := Evicted
		if victim.expires <= now {
			reason = Expired
		}
		c.unlink(b, victim, c.hash(&victim.id))
		b.stats.removed[reason]++
		if c.hooks.Load() == nil {
			b.mu.Unlock()
			continue
		}
		vr := victim.record()
		b.mu.Unlock()
		c.fire(Event{Kind: EventRemove, ID: victim.id, Origin: origin, Reason: reason, Record: vr})
	}
}

// retire removes the single session id with the given reason.
func (c *Cache) retire(id ID, reason RemoveReason, origin Origin) bool {
	b, h := c.bucket(&id)
	b.mu.Lock()
	e := b.find(&id, h)
	if e == nil {
		b.mu.Unlock()
		return false
	}
	c.unlink(b, e, h)
	b.stats.removed[reason]++
	if c.hooks.Load() == nil {
		b.mu.Unlock()
		return true
	}
	r := e.record()
	b.mu.Unlock()
	c.fire(Event{Kind: EventRemove, ID: id, Origin: origin, Reason: reason, Record: r})
	return true
}

// shorten brings the expiry of id forward to at most until.
func (c *Cache) shorten(id *ID, until int64) {
	b, h := c.bucket(id)
	b.mu.Lock()
	if e := b.find(id, h); e != nil && e.expires > until {
		c.restricted.Add(1)
		e.expires = until
	}
	b.mu.Unlock()
}

// sweep removes every expired session now, firing EventRemove with Expired
// for each, and forgets revocations that have lapsed. It returns how many
// sessions it removed. The background sweep calls it every SweepInterval.
func (c *Cache) sweep() int {
	now := c.nowNano()
	c.housekeep(now)
	return c.removeWhere(func(e *entry) bool { return e.expires <= now }, Expired, OriginSweep)
}

// housekeep forgets lapsed revocations, stale single-use claims and child
// links whose parent can no longer resume.
func (c *Cache) housekeep(now int64) {
	c.tomb.sweep(now)
	c.sweepPending(now)
	c.sweepLifecycle(now)
}

// background runs the periodic sweep. With the sweep of sessions off, it
// still forgets, as often as the default sweep, what housekeep forgets:
// that grows with every resumption and revocation, not with the sessions
// held.
func (c *Cache) background() {
	defer close(c.done)
	interval, sessions := c.cfg.SweepInterval, c.cfg.SweepInterval > 0
	if !sessions {
		interval = defaultSweepInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			c.sweeping.Store(true)
			if sessions {
				c.sweep()
			} else {
				c.housekeep(c.nowNano())
			}
			c.sweeping.Store(false)
		}
	}
}

func (e *entry) record() Record {
	return Record{
		State:      e.state,
		ServerName: e.serverName.Value(),
		Expires:    time.Unix(0, e.expires),
		Chain:      e.chain,
		ChainStart: time.Unix(0, e.chainStart),
	}
}

func (b *bucket) pushFront(e *entry) {
	e.prev = &b.root
	e.next = b.root.next
	e.next.prev = e
	b.root.next = e
}

func (b *bucket) toFront(e *entry) {
	if b.root.next == e {
		return
	}
	e.prev.next = e.next
	e.next.prev = e.prev
	b.pushFront(e)
}

// unlink removes e, whose ID's hash is h, from the bucket's maps and list;
// b.mu is held.
func (c *Cache) unlink(b *bucket, e *entry, h uint64) {
	c.restricted.Add(1)
	c.size.Add(-1)
	b.remove(e, h)
	e.prev.next = e.next
	e.next.prev = e.prev
	e.prev, e.next = nil, nil
}
