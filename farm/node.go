package farm

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/tlsfarm/tlsfarm/session"
)

// A Mode selects how sessions reach the other nodes.
type Mode uint8

const (
	// Broadcast publishes every new session to every node (and writes it
	// to the store, if there is one, for nodes that join late or missed a
	// message). Resumption stays local everywhere; each new session costs
	// one delivery per node and one copy in every node's memory. The
	// default, for farms of up to a few dozen nodes.
	Broadcast Mode = iota
	// StoreOnly writes each new session to the store only; a node looks a
	// session up there the first time a client presents it. One write and
	// at most one read per session per node, for large farms on a sharded
	// store. Revocations are broadcast in both modes.
	StoreOnly
)

func (m Mode) String() string {
	switch m {
	case Broadcast:
		return "broadcast"
	case StoreOnly:
		return "store-only"
	}
	return fmt.Sprintf("Mode(%d)", uint8(m))
}

// ParseMode parses "broadcast" or "store-only".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "broadcast", "":
		return Broadcast, nil
	case "store-only", "storeonly", "store":
		return StoreOnly, nil
	}
	return 0, fmt.Errorf("farm: unknown mode %q (want broadcast or store-only)", s)
}

// Defaults for the fields of Config.
const (
	DefaultLookupTimeout       = 250 * time.Millisecond
	DefaultWriteThroughTimeout = 250 * time.Millisecond
	DefaultQueueSize           = 16384
	DefaultBatchSize           = 256
	DefaultMaxAge              = 30 * time.Second
	DefaultMaxSkew             = 5 * time.Second
	DefaultOpTimeout           = 2 * time.Second
	DefaultHealInterval        = 30 * time.Second
	DefaultBreakerThreshold    = 5
	DefaultBreakerCooldown     = 5 * time.Second
)

// A Config joins a session cache to a farm. Farm, Secrets, Cache and Bus are
// required; zero values elsewhere mean the defaults.
type Config struct {
	// Farm names the farm. Nodes share only with nodes of the same name and
	// secret; keys in the store and the bus channel are scoped by it.
	Farm string

	// Node names this node in logs (default: the host name). Messages carry
	// a random instance ID instead, so two nodes with one name still work.
	Node string

	// Secrets are the farm's secrets (see LoadSecrets): the first seals,
	// all open. Join installs the session ID keys derived from them in Cache.
	Secrets []Secret

	// Cache is the local session cache.
	Cache *session.Cache

	// Bus carries messages between nodes.
	Bus Bus

	// Records, if set, holds each session until it expires, for lookups
	// on a miss. Without it, a node that missed a message, or joined late,
	// cannot resume what it missed.
	Records RecordStore

	// Coord holds the revocations until they lapse, and the ticket key
	// lease and key set (Node.RotateTicketKeys). It is required with
	// Records.
	Coord Coordinator

	// Store, if set, is used as Records and as Coord where those are nil:
	// the usual way to give the farm one transport for both.
	Store Store

	// Mode is Broadcast (default) or StoreOnly, which needs Records.
	Mode Mode

	// WriteThrough makes the NEW hook — and so the handshake issuing the
	// ticket — wait until the store holds the session, at most
	// WriteThroughTimeout, so that a client reconnecting at once to another
	// node always resumes. It costs a store round trip on every handshake.
	//
	// After BreakerThreshold store failures in a row (write-through waits or
	// lookups), handshakes stop waiting for the store and stop looking
	// sessions up in it for BreakerCooldown; then one handshake tries again.
	WriteThrough        bool
	WriteThroughTimeout time.Duration
	BreakerThreshold    int
	BreakerCooldown     time.Duration

	// LookupTimeout bounds a store lookup on a cache miss, during a
	// handshake (default DefaultLookupTimeout).
	LookupTimeout time.Duration

	// QueueSize bounds the sessions and revocations waiting to be
	// published; when full, the oldest is dropped and counted.
	QueueSize int
	// BatchSize is the most items published as one batch.
	BatchSize int

	// LazyPeers keeps the sessions that peers broadcast as they arrive
	// (authenticated and decrypted, not decoded) and decodes and inserts one
	// into the cache only when a client presents it here. With random
	// balancing over N nodes a node serves about one in N of the sessions
	// it is sent, so this saves most of the work of receiving; but peers'
	// sessions then reach the cache, and its hooks, only when used.
	// PendingSize bounds how many are kept (default DefaultPendingSize); the
	// oldest go first, and a client presenting one that went is served from
	// the store, if there is one.
	LazyPeers   bool
	PendingSize int

	// MaxAge is the oldest message accepted from the bus (default
	// DefaultMaxAge); MaxSkew how far in the future (default
	// DefaultMaxSkew). Both absorb clock differences between nodes.
	MaxAge, MaxSkew time.Duration

	// OpTimeout bounds each publish and each store batch (default
	// DefaultOpTimeout).
	OpTimeout time.Duration

	// HealInterval is how often the node re-reads the revocations in the
	// store, in case it missed a message (default DefaultHealInterval). It
	// also re-reads them each time the bus reconnects.
	HealInterval time.Duration

	// ProbeInterval is how often the node probes a transport that is a
	// Pinger, and ProbeTimeout how long a probe may wait for its answer
	// (defaults DefaultProbeInterval, DefaultProbeTimeout). A hung bus or
	// store shows in Stats (Connected false) within about their sum.
	ProbeInterval, ProbeTimeout time.Duration

	// NegativeCacheSize bounds the session IDs remembered as missing from
	// the store, and NegativeCacheTTL how long each is remembered
	// (defaults DefaultNegativeCacheSize, DefaultNegativeCacheTTL): a dead
	// ID presented again within the TTL costs no store lookup. A negative
	// size disables the negative cache.
	NegativeCacheSize int
	NegativeCacheTTL  time.Duration

	// RevocationFile, if set, is where the node keeps the revocations it
	// has applied locally but not yet in the store and on the bus (sealed
	// with the farm secret, mode 0600), written before RevokeSession
	// returns and read back by Join, so that a revocation survives a
	// restart of the node during an outage.
	RevocationFile string

	// FallbackTicketLifetime is the lifetime of the stateless tickets a
	// node issues instead of cached sessions while it cannot reach the
	// farm (default DefaultFallbackTicketLifetime; negative: never). It
	// takes effect only with farm-wide ticket keys (RotateTicketKeys), and
	// never for a single-use cache: see session.Cache.SetTicketFallback.
	FallbackTicketLifetime time.Duration

	// Logger receives the node's log lines (default slog.Default()). No key
	// or session secret is ever logged.
	Logger *slog.Logger

	// Now returns the current time (default time.Now).
	Now func() time.Time
}

// Store keys, relative to the farm's scope: the session records (in
// Records) and the tombstone set (in Coord).
const (
	sessionKeyPrefix = "s:"
	tombstoneKey     = "revoked"
)

func sessionKey(id session.ID) string {
	var b [len(sessionKeyPrefix) + 2*session.IDLen]byte
	copy(b[:], sessionKeyPrefix)
	hex.Encode(b[len(sessionKeyPrefix):], id[:])
	return string(b[:])
}

// A Node is one server's membership in a farm: it publishes the sessions
// this server issues, inserts those its peers issue, looks up sessions it
// lacks, and spreads revocations. Make one with Join; Close leaves the farm.
type Node struct {
	cfg      Config
	keys     *keyring
	instance uint64
	q        *queue
	sq       *queue // store writes, when they take a path of their own (see enqueue)
	brk      breaker
	sf       singleflight.Group
	neg      *negCache // nil if disabled or without a store
	log      *slog.Logger

	busProbe, storeProbe *probe // nil: not a Pinger

	unhook    func()
	leave     func() // leaves the cache's farm (session.Cache.Join), if joined
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	heal      chan struct{}
	closeOnce sync.Once
	stopWatch atomic.Pointer[func() bool] // stops Join's context from closing the node

	connected atomic.Bool
	ctr       nodeCounters
	lag       histogram
	lk        lookupCounters
	pend      *pending // with LazyPeers

	life     lifeCounters
	revs     revocations
	backlog  *backlog
	deg      degradation
	rotating atomic.Bool // ticket keys are farm-wide
	kids     chan item   // store-only: parents whose live child to swap
	recut    recuts

	genMu      sync.Mutex
	generation []byte // the store's generation record, as last read

	handlersMu sync.Mutex
	handlers   map[msgType]func(header, []byte)
}

// An item is one thing waiting to be published.
type item struct {
	id   session.ID
	rec  session.Record // for a new session
	rev  *revocation    // for a revocation
	op   itemOp         // what to do with it (see lifecycle.go)
	done chan error     // write-through: told when the store has it

	until time.Time  // opCut: the session's new end
	child session.ID // opCut: the session issued by resuming it
}

var errDropped = errors.New("farm: dropped from a full queue")

// Join joins cfg.Cache to the farm and returns at once: the node works
// degraded (from its local cache) until the transport is reachable, then
// catches up. It installs the farm's session ID keys and loader in the
// cache and registers its hooks. ctx bounds the node's life: when it ends,
// the node closes as if Close had been called.
func Join(ctx context.Context, cfg Config) (*Node, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	keys, err := newKeyring(cfg.Farm, cfg.Secrets)
	if err != nil {
		return nil, err
	}
	n := &Node{
		cfg:      cfg,
		keys:     keys,
		instance: rand.Uint64() | 1,
		q:        newQueue(cfg.QueueSize),
		brk:      breaker{threshold: cfg.BreakerThreshold, cooldown: cfg.BreakerCooldown},
		log:      cfg.Logger.With("farm", cfg.Farm, "node", cfg.Node),
		heal:     make(chan struct{}, 1),
		lag:      newHistogram(),
		lk:       lookupCounters{latency: newHistogram(), writeThrough: newHistogram()},
		handlers: map[msgType]func(header, []byte){},
		backlog:  newBacklog(cfg.QueueSize),
		kids:     make(chan item, 1024),
	}
	n.revs.wake = make(chan struct{}, 1)
	if err := cfg.Cache.SetIDKeys(keys.ids...); err != nil {
		return nil, err
	}
	// Before the loader and claimer go in: a file that does not open
	// leaves the cache as it was.
	if err := n.loadRevocations(); err != nil {
		return nil, err
	}
	if cfg.LazyPeers {
		n.pend = newPending(cfg.PendingSize)
	}
	if cfg.Records != nil {
		if cfg.NegativeCacheSize > 0 {
			n.neg = newNegCache(cfg.NegativeCacheSize, cfg.NegativeCacheTTL)
		}
		if !n.combined() {
			n.sq = newQueue(cfg.QueueSize)
		}
	}
	if cfg.Records != nil || n.pend != nil {
		n.leave = cfg.Cache.Join(cachePeer{n}, cfg.LookupTimeout)
	}
	n.initProbes()
	n.unhook = cfg.Cache.AddHook(session.EventNew|session.EventRemove, n.onEvent)

	parent := ctx
	ctx, n.cancel = context.WithCancel(context.WithoutCancel(parent))
	n.wg.Add(4)
	go n.drain(ctx, n.q, n.flush)
	go n.listener(ctx)
	go n.revoker(ctx)
	go n.childKeeper(ctx)
	if n.sq != nil {
		n.wg.Add(1)
		go n.drain(ctx, n.sq, n.flushStore)
	}
	if cfg.Coord != nil {
		n.wg.Add(1)
		go n.healer(ctx)
	}
	if n.busProbe != nil || n.storeProbe != nil {
		n.wg.Add(1)
		go n.prober(ctx)
	}
	stop := context.AfterFunc(parent, func() { n.Close() })
	n.stopWatch.Store(&stop)
	return n, nil
}

// combined reports whether the bus and the store are one transport that
// writes and publishes in one round trip: then one goroutine does both.
// Otherwise each has its own, so that one failing never holds the other
// back.
func (n *Node) combined() bool {
	_, ok := n.cfg.Bus.(Batcher)
	return ok && n.cfg.Records != nil && any(n.cfg.Bus) == any(n.cfg.Records)
}

func (cfg *Config) setDefaults() error {
	switch {
	case cfg.Farm == "" || len(cfg.Farm) > maxFarmName:
		return fmt.Errorf("farm: Config.Farm must be 1 to %d bytes", maxFarmName)
	case cfg.Cache == nil:
		return errors.New("farm: Config.Cache is required")
	case cfg.Bus == nil:
		return errors.New("farm: Config.Bus is required")
	}
	if cfg.Store != nil {
		if cfg.Records == nil {
			cfg.Records = cfg.Store
		}
		if cfg.Coord == nil {
			cfg.Coord = cfg.Store
		}
	}
	switch {
	case cfg.Records != nil && cfg.Coord == nil:
		return errors.New("farm: Config.Records needs Config.Coord, for revocations")
	case cfg.Mode == StoreOnly && cfg.Records == nil:
		return errors.New("farm: store-only mode needs a Store")
	case cfg.WriteThrough && cfg.Records == nil:
		return errors.New("farm: write-through needs a Store")
	}
	if cfg.Node == "" {
		cfg.Node, _ = os.Hostname()
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.LookupTimeout, DefaultLookupTimeout)
	def(&cfg.WriteThroughTimeout, DefaultWriteThroughTimeout)
	def(&cfg.MaxAge, DefaultMaxAge)
	def(&cfg.MaxSkew, DefaultMaxSkew)
	def(&cfg.OpTimeout, DefaultOpTimeout)
	def(&cfg.HealInterval, DefaultHealInterval)
	def(&cfg.BreakerCooldown, DefaultBreakerCooldown)
	if cfg.FallbackTicketLifetime == 0 {
		cfg.FallbackTicketLifetime = DefaultFallbackTicketLifetime
	}
	if cfg.BreakerThreshold <= 0 {
		cfg.BreakerThreshold = DefaultBreakerThreshold
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = DefaultBatchSize
	}
	if cfg.PendingSize <= 0 {
		cfg.PendingSize = DefaultPendingSize
	}
	def(&cfg.ProbeInterval, DefaultProbeInterval)
	def(&cfg.ProbeTimeout, DefaultProbeTimeout)
	def(&cfg.NegativeCacheTTL, DefaultNegativeCacheTTL)
	if cfg.NegativeCacheSize == 0 {
		cfg.NegativeCacheSize = DefaultNegativeCacheSize
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return nil
}

// Close leaves the farm: it unregisters the hooks and the loader, stops the
// node's goroutines, and waits for them. Sessions already cached stay.
// Revocations not yet applied farm-wide get one more try, bounded by
// OpTimeout. Close may be called more than once; the end of Join's context
// calls it.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		n.unhook()
		if n.leave != nil {
			n.leave()
		}
		n.cancel()
		n.wg.Wait()
		if n.PendingRevocations() > 0 {
			// One more try, bounded; what is left stays in
			// Config.RevocationFile, if set, for the next Join.
			ctx, cancel := context.WithTimeout(context.Background(), n.cfg.OpTimeout)
			n.drainRevocations(ctx)
			cancel()
		}
		if stop := n.stopWatch.Load(); stop != nil {
			(*stop)()
		}
	})
	return nil
}

// onEvent is the cache hook. It runs on the handshake's goroutine: it only
// queues, except in write-through mode, where it waits (bounded) for the
// store.
func (n *Node) onEvent(ev session.Event) {
	n.lifecycleEvent(ev)
	switch {
	case ev.Kind == session.EventNew && ev.Origin == session.OriginHandshake:
		it := item{id: ev.ID, rec: ev.Record}
		if !n.cfg.WriteThrough || !n.brk.allow(n.cfg.Now()) {
			n.enqueue(it)
			return
		}
		it.done = make(chan error, 1)
		n.enqueue(it)
		t := time.NewTimer(n.cfg.WriteThroughTimeout)
		defer t.Stop()
		n.ctr.writeThrough.Add(1)
		start := time.Now()
		select {
		case err := <-it.done:
			n.lk.writeThrough.observe(time.Since(start))
			n.brk.record(err == nil, n.cfg.Now())
			if err != nil {
				n.ctr.writeThroughFailed.Add(1)
			}
		case <-t.C:
			n.brk.record(false, n.cfg.Now())
			n.ctr.writeThroughTimeouts.Add(1)
			go n.lateWrite(it.done)
		}
	case ev.Kind == session.EventRemove && ev.Reason == session.Removed && ev.Origin == session.OriginAPI:
		n.addRevocation(ev.ID, revocation{
			chain: ev.Record.Chain,
			until: n.cfg.Cache.ChainEnd(ev.Record),
		})
	}
}

// Revoke revokes the session id across the farm: its whole resumption chain
// stops resuming on every node, including those that only have it in the
// store. It reports false if neither this node nor the store knows id.
func (n *Node) Revoke(ctx context.Context, id session.ID) (bool, error) {
	if _, ok := n.cfg.Cache.Remove(id); ok {
		return true, nil // the REMOVE hook publishes the chain
	}
	rec, ok := n.takePending(id)
	if !ok && n.cfg.Records == nil {
		return false, nil
	}
	if !ok {
		var err error
		rec, err = n.fetch(ctx, id)
		if err != nil || rec == nil {
			return false, err
		}
	}
	rev := revocation{chain: rec.Chain, until: n.cfg.Cache.ChainEnd(*rec)}
	// Tombstone locally (nothing cached, so no REMOVE event), then publish.
	n.cfg.Cache.RemoveChain(rev.chain, rev.until, session.OriginPeer)
	n.addRevocation(id, rev)
	return true, nil
}

// enqueue queues it for publishing. Where the store has a path of its own
// (n.sq), the bus's part goes to n.q and the store's to n.sq; the
// write-through waiter goes with the store's part. Only what has a bus
// part goes to n.q: revocations, new sessions in broadcast mode,
// retirements, and grace cuts in store-only mode (see busMessages); a
// released claim (opRestore) is the store's alone. Lifecycle items must
// come through here too, never straight to n.q: on the store's own path
// (a bus that is not also a Batcher store, such as NATS) n.q never writes
// the store.
func (n *Node) enqueue(it item) {
	if n.sq == nil {
		n.q.push(it)
		return
	}
	var bus bool
	switch it.op {
	case opNew:
		bus = it.rev != nil || n.cfg.Mode == Broadcast
	case opRetire:
		bus = true
	case opCut:
		bus = n.cfg.Mode == StoreOnly // broadcast peers cut on the child
	}
	if bus {
		b := it
		b.done = nil
		n.q.push(b)
	}
	n.sq.push(it)
}

// drain empties q in batches through flush (the bus's path, which also
// writes the store when sq is nil, or the store's), backing off on its own
// while flush fails.
func (n *Node) drain(ctx context.Context, q *queue, flush func(context.Context, []item) bool) {
	defer n.wg.Done()
	var batch []item
	failures := 0
	done, cancel := context.WithCancel(context.Background())
	cancel() // a context that is done: pop without waiting
	catchUp := q == n.storeQueue()
	for {
		batch = batch[:0]
		if catchUp && n.backlog.len() > 0 {
			// Catch up after an outage: sessions that did not reach the
			// farm, newest first, with whatever is new.
			batch = n.backlog.popNewest(batch, n.cfg.BatchSize, n.cfg.Now())
			batch, _ = q.pop(done, batch, n.cfg.BatchSize)
			if len(batch) == 0 {
				continue
			}
		} else {
			var err error
			batch, err = q.pop(ctx, batch, n.cfg.BatchSize)
			if err != nil {
				return
			}
		}
		if flush(ctx, batch) {
			failures = 0
			continue
		}
		// The transport is failing: back off, letting the queue absorb
		// (and, if it must, drop the oldest of) what arrives meanwhile.
		failures++
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff(failures)):
		}
	}
}

// backoff returns the wait after the given number of consecutive failures:
// exponential from 50ms to 2s, with jitter.
func backoff(failures int) time.Duration {
	d := 50 * time.Millisecond << min(failures-1, 6)
	d = min(d, 2*time.Second)
	return d/2 + rand.N(d/2+1)
}

// flush publishes one batch and reports whether every part succeeded. It
// also writes the batch to the store unless the store has a path of its
// own (flushStore).
func (n *Node) flush(ctx context.Context, batch []item) bool {
	now := n.cfg.Now()
	hdr := header{time: now, sender: n.instance, farm: n.cfg.Farm}
	msgs, news, nrevs := n.busMessages(hdr, batch)
	var puts []Item
	var dels []string
	var revs []revocation
	switch {
	case n.sq != nil:
	case n.cfg.Records != nil:
		puts, dels, revs = n.storeItems(hdr, batch, now)
	case n.cfg.Coord != nil: // no records: only the tombstones are kept
		for _, it := range batch {
			if it.rev != nil {
				revs = append(revs, *it.rev)
			}
		}
	}

	// The store write and the publish go out at once: in one round trip
	// where the transport can do both (the common case: new sessions, no
	// revocations), else concurrently. Peers hear of a session one round
	// trip sooner than if one waited for the other.
	var storeErr, pubErr error
	release := func() {
		for _, it := range batch {
			if it.done != nil {
				it.done <- storeErr
			}
		}
	}
	restores := n.sq == nil && n.cfg.Records != nil && hasOp(batch, opRestore)
	stored := n.cfg.Records != nil && (len(puts) > 0 || len(dels) > 0 || restores) || n.cfg.Coord != nil && len(revs) > 0
	if b, ok := n.cfg.Bus.(Batcher); ok && stored && len(revs) == 0 && len(dels) == 0 && !restores && any(n.cfg.Bus) == any(n.cfg.Records) {
		bctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
		storeErr = b.PutAndPublish(bctx, puts, msgs)
		pubErr = storeErr
		cancel()
		release()
	} else {
		var wg sync.WaitGroup
		if stored {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
				storeErr = n.storeBatch(sctx, hdr, puts, dels, revs)
				if restores {
					if err := n.restoreAll(sctx, hdr, batch); storeErr == nil {
						storeErr = err
					}
				}
				cancel()
				release()
			}()
		}
		if len(msgs) > 0 {
			pctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
			pubErr = n.cfg.Bus.Publish(pctx, msgs...)
			cancel()
		}
		wg.Wait()
	}

	ok := true
	if stored && ctx.Err() == nil {
		n.storeOutcome(batch, storeErr)
	} else if n.cfg.Records == nil && len(msgs) > 0 && pubErr != nil && ctx.Err() == nil {
		n.keepForLater(batch) // no store: the bus is the only way to the farm
	}
	if stored {
		if storeErr != nil {
			ok = false
			n.ctr.storeWriteErrors.Add(1)
			if ctx.Err() == nil {
				n.logOnce(&n.ctr.storeErrLogged, "farm: store write failed; sessions stay resumable here, but other nodes cannot look them up", storeErr)
			}
		} else {
			n.ctr.storeWrites.Add(uint64(len(puts)))
			n.storeAnswered(len(puts))
			n.ctr.storeErrLogged.Store(false)
		}
	}
	if len(msgs) > 0 {
		if pubErr != nil {
			ok = false
			n.ctr.publishErrors.Add(1)
			n.ctr.unpublished.Add(uint64(len(batch)))
			if ctx.Err() == nil {
				n.logOnce(&n.ctr.publishErrLogged, "farm: publish failed; local caches keep serving", pubErr)
			}
		} else {
			n.ctr.published.Add(uint64(news))
			n.ctr.publishedRevocations.Add(uint64(nrevs))
			n.countCutsSent(batch)
			n.ctr.publishErrLogged.Store(false)
		}
	}
	return ok
}

func (n *Node) storeBatch(ctx context.Context, hdr header, puts []Item, dels []string, revs []revocation) error {
	if len(puts) > 0 {
		if err := n.cfg.Records.PutRecords(ctx, puts...); err != nil {
			return err
		}
	}
	if len(dels) > 0 && n.cfg.Records != nil {
		if err := n.cfg.Records.DeleteRecords(ctx, dels...); err != nil {
			return err
		}
	}
	hdr.typ = msgTombstone
	for _, r := range revs {
		member := n.keys.seal(nil, hdr, appendRevocations(nil, []revocation{r}), nil)
		if err := n.cfg.Coord.SetAdd(ctx, tombstoneKey, member, r.until); err != nil {
			return err
		}
	}
	return nil
}

// logOnce logs err the first time in a run of failures.
func (n *Node) logOnce(flag *atomic.Bool, msg string, err error) {
	if flag.CompareAndSwap(false, true) {
		n.log.Warn(msg, "err", err)
	}
}

// listener subscribes to the bus until ctx is done.
func (n *Node) listener(ctx context.Context) {
	defer n.wg.Done()
	for failures := 1; ; failures++ {
		err := n.cfg.Bus.Subscribe(ctx, n.receive, n.busState)
		if ctx.Err() != nil {
			return
		}
		n.busState(false, err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff(failures)):
		}
	}
}

func (n *Node) busState(up bool, err error) {
	was := n.connected.Swap(up)
	defer n.updateFallback()
	switch {
	case up && !was:
		n.ctr.connects.Add(1)
		n.revs.signal()
		n.log.Info("farm: connected to the bus")
		// Catch up on revocations published while we were away.
		select {
		case n.heal <- struct{}{}:
		default:
		}
	case !up && was:
		n.log.Warn("farm: lost the bus; serving from the local cache", "err", err)
	}
}

// receive handles one message from the bus.
func (n *Node) receive(msg []byte) {
	n.ctr.received.Add(1)
	h, off, err := parseHeader(msg)
	if err != nil {
		n.ctr.rejected[rejection(err)].Add(1)
		return
	}
	if h.sender == n.instance {
		n.ctr.self.Add(1)
		return
	}
	now := n.cfg.Now()
	// The bus hands msg over (see Bus.Subscribe): decrypt it in place.
	body, err := n.keys.openParsed(msg, h, off, n.cfg.Farm, 0, nil, now, n.cfg.MaxAge, n.cfg.MaxSkew, msg[off+nonceLen:off+nonceLen])
	if err != nil {
		n.ctr.rejected[rejection(err)].Add(1)
		return
	}
	n.lag.observe(now.Sub(h.time))
	switch h.typ {
	case msgSessions:
		if n.pend != nil {
			if err := n.receiveLazy(body, now); err != nil {
				n.ctr.rejected[RejectBody].Add(1)
			}
			return
		}
		items, err := parseSessions(body)
		if err != nil {
			n.ctr.rejected[RejectBody].Add(1)
			return
		}
		for _, it := range items {
			n.ctr.receivedSessions.Add(1)
			// Copy the state out of the batch, so that one long-lived
			// session does not keep the whole message in memory.
			it.rec.State = bytes.Clone(it.rec.State)
			if err := n.cfg.Cache.Insert(it.id, it.rec, session.OriginPeer); err != nil {
				n.ctr.insertRefused.Add(1)
				continue
			}
			if n.neg != nil {
				n.neg.remove(it.id)
			}
			n.ctr.inserted.Add(1)
		}
	case msgCut:
		n.receiveCuts(body)
	case msgRevoke:
		revs, err := parseRevocations(body)
		if err != nil {
			n.ctr.rejected[RejectBody].Add(1)
			return
		}
		for _, r := range revs {
			n.ctr.receivedRevocations.Add(1)
			n.cfg.Cache.RemoveChain(r.chain, r.until, session.OriginPeer)
		}
	default:
		n.handlersMu.Lock()
		fn := n.handlers[h.typ]
		n.handlersMu.Unlock()
		if fn == nil {
			n.ctr.rejected[RejectType].Add(1)
			return
		}
		fn(h, body)
	}
}

// handle registers fn for authentic bus messages of type t (used by the key
// rotation protocol); a nil fn unregisters.
func (n *Node) handle(t msgType, fn func(header, []byte)) {
	n.handlersMu.Lock()
	if fn == nil {
		delete(n.handlers, t)
	} else {
		n.handlers[t] = fn
	}
	n.handlersMu.Unlock()
}

// load is the cache's loader: a store lookup, one at a time per ID. While
// the store is failing (the breaker is open), it does not try: a handshake should not pay the lookup deadline to learn what the
// last ones learned. Nor does it for an ID the store did not have a moment
// ago (the negative cache).
//
// Concurrent handshakes presenting one ID share one lookup, which runs
// under a context of its own (OpTimeout, detached from any one client; see
// lookupStore): each handshake gives up on its own ctx (the lookup
// deadline), and one client hanging up does not fail the others.
func (n *Node) load(ctx context.Context, id session.ID) (*session.Record, error) {
	if rec, ok := n.takePending(id); ok {
		return rec, nil
	}
	if n.cfg.Records == nil {
		return nil, nil
	}
	now := n.cfg.Now()
	if n.neg != nil && n.neg.has(id, now) {
		n.ctr.negativeHits.Add(1)
		return nil, nil
	}
	if !n.brk.allow(now) {
		n.ctr.lookupsSkipped.Add(1)
		return nil, nil
	}
	rec, err := n.lookupStore(ctx, id)
	if err != nil {
		return nil, err
	}
	if rec == nil {
		return nil, nil
	}
	cp := *rec // each caller gets its own record; State is shared, read-only
	n.noteLoaded(id, cp.Expires)
	return &cp, nil
}

// fetch reads and opens the stored session id.
func (n *Node) fetch(ctx context.Context, id session.ID) (*session.Record, error) {
	n.ctr.lookups.Add(1)
	v, err := n.cfg.Records.GetRecord(ctx, sessionKey(id))
	switch {
	case errors.Is(err, ErrNotFound):
		n.ctr.storeMisses.Add(1)
		return nil, nil
	case errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil:
		n.ctr.storeTimeouts.Add(1)
		return nil, err
	case err != nil:
		n.ctr.storeErrors.Add(1)
		return nil, err
	}
	_, body, err := n.keys.open(v, n.cfg.Farm, msgStored, id[:], n.cfg.Now(), 0, n.cfg.MaxSkew)
	if err != nil {
		n.ctr.storeRejected.Add(1)
		return nil, nil
	}
	var rec session.Record
	if err := rec.UnmarshalBinary(body); err != nil {
		n.ctr.storeRejected.Add(1)
		return nil, nil
	}
	n.ctr.storeHits.Add(1)
	return &rec, nil
}

// healer re-reads the store's revocations periodically and on reconnect.
func (n *Node) healer(ctx context.Context) {
	defer n.wg.Done()
	t := time.NewTicker(n.cfg.HealInterval)
	defer t.Stop()
	n.readTombstones(ctx)
	if n.cfg.Records != nil {
		n.checkGeneration(ctx)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-n.heal:
		}
		n.readTombstones(ctx)
		if n.cfg.Records != nil {
			n.checkGeneration(ctx)
		}
	}
}

func (n *Node) readTombstones(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
	defer cancel()
	members, err := n.cfg.Coord.SetMembers(ctx, tombstoneKey)
	if err != nil {
		return
	}
	if len(members) >= MaxSetMembers {
		n.ctr.tombstonesTruncated.Add(1)
		members = members[:MaxSetMembers]
	}
	for _, m := range members {
		_, body, err := n.keys.open(m, n.cfg.Farm, msgTombstone, nil, n.cfg.Now(), 0, n.cfg.MaxSkew)
		if err != nil {
			n.ctr.storeRejected.Add(1)
			continue
		}
		revs, err := parseRevocations(body)
		if err != nil {
			n.ctr.storeRejected.Add(1)
			continue
		}
		for _, r := range revs {
			n.cfg.Cache.RemoveChain(r.chain, r.until, session.OriginPeer)
		}
	}
}
