package session

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math/bits"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unique"
)

// Defaults for the fields of Config. The cache geometry follows Apache Traffic
// Server's proxy.config.ssl.session_cache.size and .num_buckets.
const (
	DefaultCapacity         = 102400
	DefaultBuckets          = 256
	DefaultLifetime         = 2 * time.Hour
	DefaultMaxChainLifetime = 24 * time.Hour
	DefaultResumeGrace      = 30 * time.Second
	DefaultSweepInterval    = time.Minute
	DefaultLoaderTimeout    = 5 * time.Millisecond
	DefaultMaxStateLen      = 16 << 10
)

// Errors returned by Cache.Insert.
var (
	ErrForgedID   = errors.New("session: ID is not authenticated by any ID key")
	ErrExpired    = errors.New("session: record has already expired")
	ErrRevoked    = errors.New("session: record belongs to a revoked chain")
	ErrEmptyState = errors.New("session: record has no session state")
	ErrStateLen   = errors.New("session: session state is longer than Config.MaxStateLen")

	// ErrServerNameLen is returned by Insert for a record whose server
	// name is longer than MaxServerNameLen, which no record's binary form
	// holds.
	ErrServerNameLen = errors.New("session: server name is longer than MaxServerNameLen")
)

// A Config configures a Cache. The zero value is valid: every zero field means
// its default, so a Config need only name what differs.
type Config struct {
	// Capacity is the most sessions the cache holds (default DefaultCapacity).
	// When it is full, an insert evicts the least recently used session of
	// the bucket it inserts into: eviction is least-recently-used within a
	// bucket, and, since IDs spread evenly, close to it across the cache.
	Capacity int

	// Buckets is the number of independently locked buckets, rounded up to a
	// power of two (default DefaultBuckets). A bucket is chosen by a hash of
	// the whole ID under a seed drawn when the cache is made.
	Buckets int

	// Lifetime is how long a session can be resumed after its ticket was
	// issued (default DefaultLifetime).
	Lifetime time.Duration

	// MaxChainLifetime bounds a resumption chain: a session resumed from a
	// session resumed from a full handshake, and so on, is refused once the
	// full handshake that began the chain is older than this (default
	// DefaultMaxChainLifetime). This bounds how long one master secret
	// lineage lives; crypto/tls resets its own creation time on every TLS
	// 1.3 ticket and so does not.
	MaxChainLifetime time.Duration

	// ResumeGrace is how long a session stays resumable after a handshake
	// resumed it and was issued its successor (default DefaultResumeGrace).
	// It keeps the cache near one session per active client. A negative
	// value leaves resumed sessions to their full Lifetime. Shortening needs
	// the per-handshake link installed by Configure.
	ResumeGrace time.Duration

	// SweepInterval is how often a background sweep removes expired
	// sessions (default DefaultSweepInterval; negative disables the sweep,
	// and Sweep may be called directly). Expired sessions are never returned
	// whether or not they have been swept.
	SweepInterval time.Duration

	// IDKeys authenticate session IDs: the first mints new IDs, all verify.
	// Nodes of a farm share them. If empty, the cache draws a random key and
	// its IDs are valid in this process only.
	IDKeys []IDKey

	// Mode selects the kind of ticket issued and accepted by the crypto/tls
	// glue (default Stateful).
	Mode Mode

	// AllowServerNameMismatch lets a session issued under one server name
	// (SNI) be resumed under another. By default such a resumption is
	// refused: crypto/tls itself does not check, and resuming across virtual
	// hosts is a known attack surface.
	AllowServerNameMismatch bool

	// SingleUse retires a session once a handshake that resumed it has
	// completed, which is reported by HandshakeComplete. Lookups alone never
	// retire a session: they happen before the client has proved it holds
	// the session's secret.
	SingleUse bool

	// Loader, if set, is asked for a session that a client presented and
	// that is not in the cache (for example, a farm's shared store). It is
	// called only for authenticated IDs, with a context that expires after
	// LoaderTimeout. It returns (nil, nil) when it has no such session. A
	// record it returns is inserted with OriginLoader.
	Loader func(ctx context.Context, id ID) (*Record, error)

	// LoaderTimeout bounds each call of Loader (default DefaultLoaderTimeout).
	LoaderTimeout time.Duration

	// MaxStateLen is the largest serialized session state the cache takes
	// (default DefaultMaxStateLen). Larger ones are refused with an error
	// and counted, never silently dropped.
	MaxStateLen int

	// Logger receives the cache's rare log lines, such as the first panic of
	// a hook (default slog.Default()). Key material never reaches it.
	Logger *slog.Logger

	// Now returns the current time (default time.Now).
	Now func() time.Time
}

// A Record is what the cache holds for one session.
type Record struct {
	// State is the session serialized by tls.SessionState.Bytes. A record
	// handed out by the cache (in an Event, or by Lookup) shares State with
	// the cache: it must not be modified.
	State []byte

	// ServerName is the server name (SNI) the session was issued under, in
	// lower case; "" if the client sent none.
	ServerName string

	// Expires is when the session stops being resumable.
	Expires time.Time

	// Chain identifies the resumption chain of the session: a full handshake
	// starts a chain and every ticket issued by resuming it continues it.
	Chain uint64

	// ChainStart is when the full handshake that began the chain happened.
	ChainStart time.Time

	// Parent is the session this one was resumed from, if known (zero
	// otherwise). It is not kept in the cache: Insert uses it to cut the
	// parent to Config.ResumeGrace, as the handshake that resumed it did on
	// the server where it happened, so that peers too hold about one
	// session per active client. It is set in EventNew records.
	Parent ID
}

// A Cache is a server-side TLS session cache with a plugin hook API. It is
// safe for concurrent use. Use New to make one and Close to stop its sweep.
type Cache struct {
	cfg     Config
	buckets []bucket
	mask    uint64
	seed    maphash.Seed

	size  atomic.Int64 // sessions held, across buckets
	clock atomic.Int64 // coarse wall clock, Unix nanoseconds; 0 when not running
	keys  atomic.Pointer[idKeys]
	hooks atomic.Pointer[[]*hook]
	hmu   sync.Mutex // serializes hook list changes

	loader  atomic.Pointer[loader]
	tomb    tombstones
	pending sync.Map // net.Conn -> *claim, for SingleUse
	life    lifecycle

	panicLogged atomic.Bool
	ctr         counters

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

type bucket struct {
	mu    sync.Mutex
	m     map[ID]*entry
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
// It returns an error only for an invalid ID key set.
func New(cfg *Config) (*Cache, error) {
	var c Cache
	if cfg != nil {
		c.cfg = *cfg
	}
	cf := &c.cfg
	if cf.Capacity <= 0 {
		cf.Capacity = DefaultCapacity
	}
	if cf.Buckets <= 0 {
		cf.Buckets = DefaultBuckets
	}
	cf.Buckets = 1 << bits.Len(uint(cf.Buckets-1))
	if cf.Buckets > cf.Capacity {
		cf.Buckets = 1 << (bits.Len(uint(cf.Capacity)) - 1)
	}
	if cf.Lifetime <= 0 {
		cf.Lifetime = DefaultLifetime
	}
	if cf.MaxChainLifetime <= 0 {
		cf.MaxChainLifetime = DefaultMaxChainLifetime
	}
	if cf.ResumeGrace == 0 {
		cf.ResumeGrace = DefaultResumeGrace
	}
	if cf.SweepInterval == 0 {
		cf.SweepInterval = DefaultSweepInterval
	}
	if cf.LoaderTimeout <= 0 {
		cf.LoaderTimeout = DefaultLoaderTimeout
	}
	if cf.MaxStateLen <= 0 {
		cf.MaxStateLen = DefaultMaxStateLen
	}
	if cf.Logger == nil {
		cf.Logger = slog.Default()
	}
	if cf.Now == nil {
		cf.Now = time.Now
		c.clock.Store(time.Now().UnixNano())
	}
	if cf.Mode > Mixed {
		return nil, fmt.Errorf("session: unknown mode %d", cf.Mode)
	}
	keys := cf.IDKeys
	if len(keys) == 0 {
		keys = []IDKey{randomIDKey()}
	}
	k, err := newIDKeys(keys)
	if err != nil {
		return nil, err
	}
	cf.IDKeys = nil // the cache keeps only the AES schedules
	c.keys.Store(k)
	if cf.Loader != nil {
		c.loader.Store(&loader{fn: cf.Loader, timeout: cf.LoaderTimeout})
	}

	c.seed = maphash.MakeSeed()
	c.mask = uint64(cf.Buckets - 1)
	c.buckets = make([]bucket, cf.Buckets)
	for i := range c.buckets {
		b := &c.buckets[i]
		b.m = make(map[ID]*entry)
		b.root.next, b.root.prev = &b.root, &b.root
	}
	c.tomb.m = make(map[uint64]int64)
	c.stop = make(chan struct{})
	c.done = make(chan struct{})
	go c.background()
	return &c, nil
}

// Close stops the background sweep and the coarse clock. The cache stays
// usable: after Close it reads the time with Config.Now on every call.
func (c *Cache) Close() error {
	c.closeOnce.Do(func() { close(c.stop) })
	<-c.done
	return nil
}

// SetIDKeys replaces the ID keys: the first mints new IDs, all verify. IDs
// minted under a key that is no longer in the set stop resuming.
func (c *Cache) SetIDKeys(keys ...IDKey) error {
	k, err := newIDKeys(keys)
	if err != nil {
		return err
	}
	c.keys.Store(k)
	return nil
}

// SetLoader installs (or, with a nil fn, removes) the function asked for
// sessions that are not in the cache, as Config.Loader and
// Config.LoaderTimeout do (a timeout of 0 means DefaultLoaderTimeout). A
// plugin that joins a farm after the cache was made uses it.
func (c *Cache) SetLoader(fn func(ctx context.Context, id ID) (*Record, error), timeout time.Duration) {
	if fn == nil {
		c.loader.Store(nil)
		return
	}
	if timeout <= 0 {
		timeout = DefaultLoaderTimeout
	}
	c.loader.Store(&loader{fn: fn, timeout: timeout})
}

type loader struct {
	fn      func(ctx context.Context, id ID) (*Record, error)
	timeout time.Duration
}

// MaxChainLifetime returns the cache's Config.MaxChainLifetime, after
// defaults: a revoked chain is remembered until its start plus this.
func (c *Cache) MaxChainLifetime() time.Duration { return c.cfg.MaxChainLifetime }

// NewID mints a fresh authenticated session ID.
func (c *Cache) NewID() ID { return c.keys.Load().newID() }

// CheckID reports whether b is an ID minted under one of the cache's ID
// keys, and returns it. It costs one AES block operation and no lookup.
func (c *Cache) CheckID(b []byte) (ID, bool) {
	if !c.keys.Load().checkPooled(b) {
		return ID{}, false
	}
	return ID(b), true
}

func (c *Cache) bucket(id *ID) *bucket {
	return &c.buckets[maphash.Bytes(c.seed, id[:])&c.mask]
}

// clockTick is how often the cache's coarse clock advances. Expiry is
// decided to within one tick; reading the clock costs an atomic load instead
// of a time.Now (tens of nanoseconds on virtual machines).
const clockTick = 2 * time.Millisecond

// nowNano returns the time in Unix nanoseconds: the coarse clock while it
// runs, otherwise Config.Now.
func (c *Cache) nowNano() int64 {
	if v := c.clock.Load(); v != 0 {
		return v
	}
	return c.cfg.Now().UnixNano()
}

// Lookup returns the record of the session id, firing EventGet with
// OriginAPI. The record's State is shared with the cache and must not be
// modified.
func (c *Cache) Lookup(id ID) (Record, bool) {
	var r Record
	ok := c.get(&id, OriginAPI, func(e *entry) { r = e.record() })
	return r, ok
}

// Get returns the session id as a new tls.SessionState that the caller owns,
// firing EventGet with OriginAPI. It reports false if the session is absent,
// expired, or cannot be parsed.
func (c *Cache) Get(id ID) (*tls.SessionState, bool) {
	var state []byte
	if !c.get(&id, OriginAPI, func(e *entry) { state = e.state }) {
		return nil, false
	}
	s, err := tls.ParseSessionState(state)
	if err != nil {
		c.ctr.parseErrors.Add(1)
		return nil, false
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
	})
	return n, ok
}

// get finds id, marks it most recently used, calls fn on it under the bucket
// lock, and fires the events the lookup caused.
func (c *Cache) get(id *ID, origin Origin, fn func(*entry)) bool {
	now := c.nowNano()
	b := c.bucket(id)
	var expired *entry
	b.mu.Lock()
	e := b.m[*id]
	if e != nil && e.expires <= now {
		c.unlink(b, e)
		b.stats.removed[Expired]++
		expired, e = e, nil
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
		c.fire(Event{Kind: EventGet, ID: *id, Origin: origin, Found: true, Record: r})
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

// Insert adds the session id with record r, or replaces the record of an
// existing session id (firing EventNew with Replaced set, and no
// EventRemove). The insert is atomic: a concurrent lookup sees the old record
// or the new one. If the bucket is full, its least recently used session is
// evicted (EventRemove with Evicted). origin is reported in the events; a
// plugin passes OriginPeer for sessions received from other servers, so that
// it and other plugins do not send them back out.
//
// Insert refuses an ID not authenticated by the cache's ID keys, a record
// without state or with state longer than MaxStateLen, one whose server name
// is longer than MaxServerNameLen, one that has already
// expired, and one whose chain has been revoked. A zero r.ChainStart means
// now; a zero r.Chain draws a new chain. Insert keeps its own copy of nothing:
// r.State must not be modified afterwards.
func (c *Cache) Insert(id ID, r Record, origin Origin) error {
	if !c.keys.Load().checkPooled(id[:]) {
		c.ctr.forgedIDs.Add(1)
		return ErrForgedID
	}
	if len(r.State) == 0 {
		return ErrEmptyState
	}
	if len(r.State) > c.cfg.MaxStateLen {
		c.ctr.oversized.Add(1)
		return ErrStateLen
	}
	if len(r.ServerName) > MaxServerNameLen {
		return ErrServerNameLen
	}
	now := c.nowNano()
	e := &entry{
		id:         id,
		state:      r.State,
		serverName: unique.Make(strings.ToLower(r.ServerName)),
		chain:      r.Chain,
		expires:    r.Expires.UnixNano(),
		chainStart: r.ChainStart.UnixNano(),
	}
	if r.ChainStart.IsZero() {
		e.chainStart = now
	}
	if r.Chain == 0 {
		e.chain = newChain()
	}
	if lim := e.chainStart + int64(c.cfg.MaxChainLifetime); e.expires > lim {
		e.expires = lim
	}
	if e.expires <= now {
		return ErrExpired
	}
	expires := e.expires // e belongs to the bucket once inserted
	if err := c.insert(e, origin, now, r.Parent); err != nil {
		return err
	}
	if r.Parent != (ID{}) {
		if c.cfg.ResumeGrace > 0 {
			c.shorten(&r.Parent, now+int64(c.cfg.ResumeGrace))
		}
		c.linkChild(r.Parent, id, expires, c.graceEnd(now, expires), origin)
	}
	return nil
}

// insert adds e; parent is reported in the EventNew record.
func (c *Cache) insert(e *entry, origin Origin, now int64, parent ID) error {
	if c.tomb.revoked(e.chain, now) {
		c.ctr.revokedInserts.Add(1)
		return ErrRevoked
	}
	b := c.bucket(&e.id)
	var victim *entry
	var reason RemoveReason
	b.mu.Lock()
	old := b.m[e.id]
	if old != nil {
		old.state, old.serverName, old.chain = e.state, e.serverName, e.chain
		old.expires, old.chainStart = e.expires, e.chainStart
		b.toFront(old)
		e = old
	} else {
		if c.size.Load() >= int64(c.cfg.Capacity) && len(b.m) > 0 {
			victim = b.root.prev
			reason = Evicted
			if victim.expires <= now {
				reason = Expired
			}
			c.unlink(b, victim)
			b.stats.removed[reason]++
		}
		b.m[e.id] = e
		b.pushFront(e)
		c.size.Add(1)
	}
	b.stats.inserts++
	if c.hooks.Load() == nil {
		b.mu.Unlock()
		return nil
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
	c.fire(Event{Kind: EventNew, ID: e.id, Origin: origin, Replaced: old != nil, Record: r})
	return nil
}

// Remove revokes the session id: it removes the session and every other
// session of its resumption chain (the tickets issued by resuming it, and the
// one it was resumed from), and refuses that chain from then on, until the
// chain could no longer be resumed anyway. Each removed session fires
// EventRemove with Removed and OriginAPI. Remove reports whether id was in
// the cache; if it was not, nothing is revoked (see RemoveChain).
func (c *Cache) Remove(id ID) bool {
	b := c.bucket(&id)
	b.mu.Lock()
	e := b.m[id]
	var chain uint64
	var until int64
	if e != nil {
		chain, until = e.chain, e.chainStart+int64(c.cfg.MaxChainLifetime)
	}
	b.mu.Unlock()
	if e == nil {
		return false
	}
	c.RemoveChain(chain, time.Unix(0, until), OriginAPI)
	return true
}

// RemoveChain revokes a resumption chain: it removes every session of the
// chain and refuses sessions of it, from any origin, until the given time
// (when the chain's sessions would have been refused anyway, ChainStart plus
// MaxChainLifetime). It returns how many sessions it removed. It visits every
// bucket, so its cost grows with the cache; revocation is rare.
func (c *Cache) RemoveChain(chain uint64, until time.Time, origin Origin) int {
	now := c.nowNano()
	u := until.UnixNano()
	if lim := now + int64(c.cfg.MaxChainLifetime); u > lim {
		u = lim // a peer cannot make us remember a chain for longer than it could live
	}
	if u > now && !c.tomb.add(chain, u) {
		// Already revoked at least this long: its sessions are gone and
		// cannot come back, so a repeated revocation costs no scan.
		return 0
	}
	return c.removeWhere(func(e *entry) bool { return e.chain == chain }, Removed, origin)
}

// removeWhere removes, bucket by bucket, the sessions for which match
// reports true, and fires one EventRemove for each.
func (c *Cache) removeWhere(match func(*entry) bool, reason RemoveReason, origin Origin) int {
	n := 0
	var gone []Event
	for i := range c.buckets {
		b := &c.buckets[i]
		b.mu.Lock()
		for e := b.root.next; e != &b.root; {
			next := e.next
			if match(e) {
				c.unlink(b, e)
				b.stats.removed[reason]++
				n++
				if c.hooks.Load() != nil {
					gone = append(gone, Event{Kind: EventRemove, ID: e.id, Origin: origin, Reason: reason, Record: e.record()})
				}
			}
			e = next
		}
		b.mu.Unlock()
		for _, ev := range gone {
			c.fire(ev)
		}
		gone = gone[:0]
	}
	return n
}

// retire removes the single session id with the given reason.
func (c *Cache) retire(id ID, reason RemoveReason, origin Origin) bool {
	b := c.bucket(&id)
	b.mu.Lock()
	e := b.m[id]
	if e == nil {
		b.mu.Unlock()
		return false
	}
	c.unlink(b, e)
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
	b := c.bucket(id)
	b.mu.Lock()
	if e := b.m[*id]; e != nil && e.expires > until {
		e.expires = until
	}
	b.mu.Unlock()
}

// Sweep removes every expired session now, firing EventRemove with Expired
// for each, and forgets revocations that have lapsed. It returns how many
// sessions it removed. A background sweep calls it every SweepInterval.
func (c *Cache) Sweep() int {
	now := c.nowNano()
	c.tomb.sweep(now)
	c.sweepPending(now)
	c.sweepLifecycle(now)
	return c.removeWhere(func(e *entry) bool { return e.expires <= now }, Expired, OriginAPI)
}

// background advances the coarse clock and runs the periodic sweep.
func (c *Cache) background() {
	defer close(c.done)
	var tick <-chan time.Time
	if c.clock.Load() != 0 {
		t := time.NewTicker(clockTick)
		defer t.Stop()
		tick = t.C
	}
	var sweep <-chan time.Time
	if c.cfg.SweepInterval > 0 {
		t := time.NewTicker(c.cfg.SweepInterval)
		defer t.Stop()
		sweep = t.C
	}
	for {
		select {
		case <-c.stop:
			c.clock.Store(0) // from now on, read Config.Now (time.Now)
			return
		case <-tick:
			c.clock.Store(time.Now().UnixNano())
		case <-sweep:
			c.Sweep()
		}
	}
}

// Len returns the number of sessions in the cache, including any that have
// expired but not yet been swept.
func (c *Cache) Len() int { return int(c.size.Load()) }

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

// unlink removes e from the bucket's map and list; b.mu is held.
func (c *Cache) unlink(b *bucket, e *entry) {
	c.size.Add(-1)
	delete(b.m, e.id)
	e.prev.next = e.next
	e.next.prev = e.prev
	e.prev, e.next = nil, nil
}

func newChain() uint64 {
	var b [8]byte
	rand.Read(b[:])
	if v := binary.LittleEndian.Uint64(b[:]); v != 0 {
		return v
	}
	return 1
}

// tombstones remember revoked chains until they could no longer be resumed.
type tombstones struct {
	n  atomic.Int32
	mu sync.RWMutex
	m  map[uint64]int64 // chain -> until, Unix nanoseconds
}

// add records chain as revoked until the given time, and reports whether
// the chain was not already revoked (until then or longer).
func (t *tombstones) add(chain uint64, until int64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	old, had := t.m[chain]
	if until > old {
		t.m[chain] = until
	}
	t.n.Store(int32(len(t.m)))
	return !had
}

func (t *tombstones) revoked(chain uint64, now int64) bool {
	if t.n.Load() == 0 {
		return false
	}
	t.mu.RLock()
	until, ok := t.m[chain]
	t.mu.RUnlock()
	return ok && until > now
}

func (t *tombstones) sweep(now int64) {
	t.mu.Lock()
	for k, until := range t.m {
		if until <= now {
			delete(t.m, k)
		}
	}
	t.n.Store(int32(len(t.m)))
	t.mu.Unlock()
}
