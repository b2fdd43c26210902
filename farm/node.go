package farm

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/session"
)

// A Node is one server's membership in a farm: it publishes the sessions
// this server issues, inserts those its peers issue, looks up sessions it
// lacks, and spreads revocations. Make one with Join; Close leaves the farm.
type Node struct {
	cfg      Config
	keys     *farmKeys
	instance uint64
	q        *queue
	sq       *queue // store writes, when they take a path of their own (see enqueue)
	brk      breaker
	sf       singleflight.Group
	neg      *negCache           // nil if disabled or without a store
	retired  *idMemory[struct{}] // IDs retired lately: a peer's copy must not bring one back
	resumed  *endMemory          // IDs resumed (cut to their grace) lately, with the cut's end: a peer's whole copy, or the store's record, must not undo the cut
	// resumedNotes counts noteResumed's additions to resumed (see readMark).
	resumedNotes atomic.Uint64
	written      *idMemory[struct{}] // sessions this node wrote lately where a peer's restriction may have come first (see recutLate); nil without a store
	log          *slog.Logger

	// publishFirst: the combined path's one round trip may deliver its
	// messages before its records are written (a Redis Cluster: see
	// transport.UnorderedBatcher), as a store on a path of its own may.
	publishFirst bool

	// cutAge and revokeAge are the oldest cut (msgCut, and the parents'
	// cuts msgSessions imply) and revocation accepted from the bus: see
	// maxAgeFor.
	cutAge, revokeAge time.Duration

	busProbe, storeProbe *probe // nil: not a Pinger

	// hitMarker is the bus, if it marks its delivery and the node has a
	// store to check its cache's hits against while it lags (see
	// hitgate.go); nil otherwise.
	hitMarker transport.DeliveryMarker
	// hitLag is how far behind the present the bus's delivery may be
	// for a hit to resume without asking the store: MaxDeliveryLag, or
	// the cache's ResumeGrace less FlushWindow if that is shorter (see
	// hitsCurrent).
	hitLag time.Duration
	// gap counts the gaps in the subscription, and says whether the last
	// one is healed (see gapOpen).
	gap atomic.Uint64
	// upProbeBegun is the store probes begun when the subscription last
	// came up: the hit gate of a node healing from a gap trusts a store
	// probe's failure only if that probe began since (see checkHit). One
	// begun during the gap may fail after the subscription is back, as
	// the gap found the store.
	upProbeBegun atomic.Uint64

	unhook func()
	leave  func() // leaves the cache's farm (session.Cache.Join), if joined
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// tracked counts the goroutines that handshakes begin (goTracked);
	// trackClosed, set by Close under trackMu, stops new ones.
	tracked     sync.WaitGroup
	trackMu     sync.Mutex
	trackClosed bool
	heal        chan struct{}
	// strikeRenew asks primeStrikes to renew the strike register.
	strikeRenew chan struct{}
	closeOnce   sync.Once
	stopWatch   atomic.Pointer[func() bool] // stops Join's context from closing the node

	// The publishers (drain) have a context and a wait group of their
	// own: Close first lets them empty their queues (closing), and
	// cancels them (stopPub) only when they are done or the bound is up.
	stopPub      context.CancelFunc
	startClosing context.CancelFunc
	pubs         sync.WaitGroup
	busDownAtEnd atomic.Bool // the bus had reported itself down when Close began

	connected atomic.Bool
	busFirst  chan struct{} // closed when the bus first reports its state (up or down)
	busOnce   sync.Once
	// A gap in a subscription that stays up (transport.ErrMessagesDropped),
	// kept by busState on the listener's goroutine: whether the down just
	// reported was one (its up is then no connect), when a gap was last
	// logged, and the gaps since.
	inGap        bool
	gapLogged    time.Time
	gapsUnlogged int

	// revsKnown is set once the node has read the farm's revocation list
	// (or has none to read); until then it resumes no session from the
	// farm (see Join). revsReady is closed when it is set.
	revsKnown  atomic.Bool
	revsReady  chan struct{}
	revsOnce   sync.Once
	revsWarned atomic.Bool // Join's read failed, and said so
	tombs      tombstoneReads
	synced     chan struct{} // closed when Join's first read of them has ended, done or not
	ctr        nodeCounters
	lag        histogram
	lk         lookupCounters
	pend       *pending // with LazyPeers
	arr        arrivals // wakes young-session waiters (write-through)

	life     lifeCounters
	revs     revocations
	rids     recordedIDs // sessions revoked by ID (see revokeid.go)
	backlog  *backlog
	lifeq    *laterLife // retirements and cuts whose flush failed (n.q's path)
	lifesq   *laterLife // the same for flushStore (n.sq's path)
	held     *laterLife // retirements and cuts kept, until they expire: see heldLife
	sent     *sentRing  // retirements and cuts made here, for peers' re-send requests: see keepSent
	heldAny  atomic.Bool
	rs       resendState // peers' requests to re-send what held keeps, and this node's
	tly      tallyState  // messages published and received, to find those the bus lost
	pm       peerMarks   // delivery marks of each peer's messages (see peermark.go)
	lf       lifeFile    // the lifecycle file, beside Config.RevocationFile
	deg      degradation
	rotating atomic.Bool // ticket keys are farm-wide
	// proberHold, if set, is called by the prober before each probe it
	// begins, for the tests (HoldProber): it holds the prober back.
	proberHold atomic.Pointer[func(context.Context)]
	// reachSince is when the node's current period of reaching the farm
	// (bus subscription up, probes answered, store writes succeeding)
	// began, in Unix nanoseconds by its clock; 0 while it cannot reach
	// it. updateFallback sets it (see noteReach).
	reachSince atomic.Int64
	kids       chan item // store-only: parents whose live child to swap
	recut      recuts
	// settled says how far, and when, the store writes of the
	// retirements and cuts made here were settled (see settleStore).
	settled settleMarks

	recon reconcileState // the bus's outages, for the reconciler
	// lastGap is the last gap the node began to settle, nil before the
	// first (see fromBeforeGap).
	lastGap atomic.Pointer[settledGap]
	flights [2]flight // new sessions being written: by n.q's drain, n.sq's

	genMu      sync.Mutex
	generation []byte // the store's generation record, as last read
	// refilling is set from when the node finds the store's generation
	// changed (the store lost its data) until a write-back has written
	// (or the node closes; see retryWriteBack): its
	// reconciles do not take a missing record for a retirement meanwhile.
	refilling atomic.Bool
	// owedWriteBack is set while a write-back to a store that lost its
	// data failed to write (see checkGeneration): the next heal tries
	// it again, and refilling stays set until one succeeds.
	owedWriteBack atomic.Bool
	// owedPrime is set while the strike register's priming after a store
	// that lost its data has failed: the next heal tries it again (see
	// retryPrime).
	owedPrime atomic.Bool

	handlersMu sync.Mutex
	handlers   map[envType]func(header, []byte)
}

// An item is one thing waiting to be published.
type item struct {
	id  session.ID
	rec session.Record // for a new session
	rev *revocation    // for a revocation
	op  itemOp         // what to do with it (see lifecycle.go)

	until time.Time  // opCut: the session's new end
	child session.ID // opCut: the session issued by resuming it

	// expires is, for opRetire and opCut, when the session's record would
	// leave the store (and peers' copies their caches) anyway: a retirement
	// or a cut kept after a failed write matters until then (see
	// keepLifecycle). Zero: not known yet.
	expires time.Time
	// later marks a new session kept in the backlog after a failed write:
	// refreshLater updates it from the cache before it is written again,
	// and the store applies the cut mark a peer's cut may have left
	// (transport.Item.Late).
	later bool
	// taken marks an opRetire of a session this node took from the store
	// (a consumption: Consume, or a single-use resumption's claim): its
	// deletion finds no record, and leaves no retirement mark (see
	// retireItems), so that a single-use farm does not write one at
	// every resumption.
	taken bool
	// restored marks an opCut read back from the lifecycle file (see
	// restoreLife): the child that would tell broadcast peers to cut is lost
	// with the restart, so the cut is published in broadcast mode too.
	restored bool
	// sent is, for an opRetire or opCut made here, its count among the
	// items Node.sent ever kept (see keepSent): once its store write is
	// settled, Node.settled says so (see settleStore).
	sent uint64
}

// Join joins cfg.Cache to the farm. It installs the farm's session ID keys
// in the cache, joins the cache to the farm (session.Cache.Join) and
// registers its hooks. ctx bounds the node's life: when it ends, the node
// closes as if Close had been called.
//
// Before it returns, Join subscribes to the bus and then reads the farm's
// revocations from the Coordinator, so that from the moment it returns the
// node refuses every session the farm revoked before, and hears of every
// revocation made after; with a record store, it also reads the store's
// generation record, by whose change it finds later that the store lost
// its data. The wait is bounded by OpTimeout (and ends at once
// if the transport refuses connections); the read itself has a longer
// bound, sized for the largest list (transport.MaxSetMembers), and goes on
// after Join returns. A node whose read did not succeed in that time does
// not fail: it serves, but resumes no session from the
// farm — no store lookup, no peer's session, no ticket under the farm's
// keys (see Node.RotateTicketKeys) — until a read succeeds, which it retries
// with backoff; clients get full handshakes meanwhile. Node.RevocationsKnown
// reports which state the node is in. Otherwise the node works degraded,
// from its local cache, until the transport is reachable, then catches up.
func Join(ctx context.Context, cfg Config) (*Node, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	keys, err := deriveFarmKeys(cfg.Farm, cfg.Secrets)
	if err != nil {
		return nil, err
	}
	n := &Node{
		cfg:      cfg,
		keys:     keys,
		instance: rand.Uint64() | 1,
		q:        newQueue(cfg.QueueSize),
		brk:      breaker{threshold: cfg.BreakerThreshold, cooldown: cfg.BreakerCooldown},
		log:      cfg.Logger.With("farm", cfg.Farm, "node", cfg.NodeName),
		heal:     make(chan struct{}, 1),
		lag:      newHistogram(),
		lk:       lookupCounters{latency: newHistogram(), youngWait: newHistogram()},
		handlers: map[envType]func(header, []byte){},
		backlog:  newBacklog(cfg.QueueSize),
		lifeq:    newLaterLife(cfg.QueueSize),
		lifesq:   newLaterLife(cfg.QueueSize),
		held:     newLaterLife(2 * cfg.QueueSize),
		sent:     newSentRing(cfg.QueueSize),
		kids:     make(chan item, 1024),
	}
	n.q.setWindow(cfg.FlushWindow, cfg.BatchSize)
	cc := cfg.Cache.Config()
	n.cutAge = max(cc.Lifetime+cfg.MaxSkew, cfg.MaxAge)
	n.revokeAge = max(cc.MaxChainLifetime+cfg.MaxSkew, cfg.MaxAge)
	n.revs.wake = make(chan struct{}, 1)
	n.strikeRenew = make(chan struct{}, 1)
	n.recon.wake = make(chan struct{}, 1)
	n.rs.ask, n.rs.send = make(chan struct{}, 1), make(chan struct{}, 1)
	n.busFirst = make(chan struct{})
	n.tly.on = cfg.TallyInterval > 0
	n.tly.width = max(cfg.TallyInterval.Microseconds(), 1)
	n.revsReady = make(chan struct{})
	n.synced = make(chan struct{})
	if cfg.Coord == nil {
		n.setRevocationsKnown() // no list: revocations come only by the bus
	}
	if err := cfg.Cache.SetIDKeys(keys.ids...); err != nil {
		return nil, err
	}
	// The clock difference allowed peers' messages is allowed their
	// stateless tickets too, unless the cache's Config set its own.
	cfg.Cache.SetDefaultClockSkew(cfg.MaxSkew)
	n.lf.path, n.lf.sentPath = lifePath(&cfg), sentPath(&cfg)
	if n.lf.path != "" {
		n.lf.dirty, n.lf.sentDirty = make(chan struct{}, 1), make(chan struct{}, 1)
		n.lifeq.notify, n.lifesq.notify = n.lifeChanged, n.lifeChanged
	}
	// Before the cache joins the farm: a file that does not open
	// leaves the cache as it was.
	kept, err := n.readLife()
	if err != nil {
		return nil, err
	}
	n.readSent()
	if err := n.loadRevocations(); err != nil {
		return nil, err
	}
	if err := n.loadIDRevocations(); err != nil {
		return nil, err
	}
	if cfg.LazyPeers {
		n.pend = newPending(cfg.PendingSize)
	}
	n.retired = newIDMemory(maxRetired, cfg.MaxAge+cfg.MaxSkew)
	n.resumed = newEndMemory(maxResumed, cfg.MaxAge+cfg.MaxSkew)
	if cfg.Records != nil {
		if cfg.NegativeCacheSize > 0 {
			n.neg = newNegCache(cfg.NegativeCacheSize, cfg.NegativeCacheTTL)
		}
		if !n.combined() {
			n.sq = newQueue(cfg.QueueSize)
			n.sq.setWindow(cfg.FlushWindow, cfg.BatchSize)
		} else if u, ok := cfg.Bus.(transport.UnorderedBatcher); ok {
			n.publishFirst = u.MayPublishFirst()
		}
		n.written = newWritten(cfg.MaxAge + cfg.MaxSkew)
	}
	n.restoreLife(kept)
	if dm, ok := cfg.Bus.(transport.DeliveryMarker); ok {
		if cfg.Records != nil {
			n.hitMarker = dm
			n.hitLag = hitLag(cfg.MaxDeliveryLag, cfg.Cache.Config().ResumeGrace, cfg.FlushWindow)
		}
		if st, ok := cfg.Bus.(transport.ServerTeller); ok {
			n.pm.init(st, peerMarkInterval(&cfg))
		}
	}
	if cfg.Records != nil || n.pend != nil {
		n.leave = cfg.Cache.Join(cachePeer{n}, cfg.LookupTimeout)
	}
	n.initProbes()
	n.unhook = cfg.Cache.AddHook(session.EventNew|session.EventRemove, n.onEvent)

	parent := ctx
	ctx, n.cancel = context.WithCancel(context.WithoutCancel(parent))
	pctx, stopPub := context.WithCancel(context.WithoutCancel(parent))
	closing, startClosing := context.WithCancel(pctx)
	n.stopPub, n.startClosing = stopPub, startClosing
	n.pubs.Add(1)
	go n.drain(pctx, closing, n.q, n.flush)
	if n.sq != nil {
		n.pubs.Add(1)
		go n.drain(pctx, closing, n.sq, n.flushStore)
	}
	n.wg.Add(5)
	go n.resender(ctx, n.rs.ask, func(ctx context.Context) { n.askResend(ctx, n.rs.askAll.Swap(false)) })
	go n.resender(ctx, n.rs.send, func(ctx context.Context) { n.resendHeld(ctx, n.rs.sendAll.Swap(false)) })
	go n.listener(ctx)
	go n.revoker(ctx)
	go n.childKeeper(ctx)
	if n.lf.path != "" {
		n.wg.Add(1)
		go n.lifeSaver(ctx)
	}
	if n.busProbe != nil || n.storeProbe != nil {
		n.wg.Add(1)
		go n.prober(ctx)
	}
	if n.tly.on {
		n.wg.Add(1)
		go n.tallier(ctx)
	}
	if n.pm.on {
		n.wg.Add(1)
		go n.marker(ctx)
	}
	if cfg.Records != nil {
		n.wg.Add(1)
		go n.reconciler(ctx)
	}
	if _, ok := cfg.Records.(transport.RecordTaker); ok && cfg.Coord != nil {
		n.wg.Add(1)
		go n.primeStrikes(ctx)
	}
	if cfg.Coord != nil {
		n.wg.Add(1)
		go n.healer(ctx)
		wait := time.NewTimer(cfg.OpTimeout)
		select {
		case <-n.synced:
		case <-wait.C:
			// The read goes on, bounded by tombstoneTimeout: until
			// it is done the node resumes no session from the farm.
		case <-parent.Done():
		}
		wait.Stop()
	}
	stop := context.AfterFunc(parent, func() { n.Close() })
	n.stopWatch.Store(&stop)
	return n, nil
}

// firstSync is Join's first read of the farm's revocations: it waits for
// the bus first (so that a revocation published from then on reaches the
// node), for OpTimeout at most, then reads the list in the Coordinator
// (which holds every revocation stored before the read), bounded by
// tombstoneTimeout: a large list takes longer than one request. Join waits
// for both together for OpTimeout at most.
func (n *Node) firstSync(ctx context.Context) {
	wait, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
	select {
	case <-n.busFirst:
	case <-wait.Done():
	}
	cancel()
	select {
	case <-n.heal: // the read below is the one the connect asked for
	default:
	}
	if err := n.readTombstones(ctx); err != nil {
		n.revsWarned.Store(true)
		n.log.Warn("farm: cannot read the farm's revocations; resuming no session from the farm (full handshakes) until they are read", "err", err)
	}
}

// setRevocationsKnown records that the node holds the farm's revocations.
func (n *Node) setRevocationsKnown() {
	n.revsOnce.Do(func() {
		n.revsKnown.Store(true)
		close(n.revsReady)
	})
}

// RevocationsKnown reports whether the node has read the farm's revocation
// list since Join (always true without a Coordinator). Until it has, it
// resumes no session from the farm: see Join.
func (n *Node) RevocationsKnown() bool { return n.revsKnown.Load() }

// combined reports whether the bus and the store are one transport that
// writes and publishes in one round trip: then one goroutine does both.
// Otherwise each has its own, so that one failing never holds the other
// back.
func (n *Node) combined() bool {
	_, ok := n.cfg.Bus.(transport.Batcher)
	return ok && n.cfg.Records != nil && any(n.cfg.Bus) == any(n.cfg.Records)
}

// Close leaves the farm: it unregisters the hooks, takes the cache out of
// the farm (the leave function of session.Cache.Join), lets the publishers
// empty their queues, stops the node's goroutines, and waits for them.
// Sessions already cached stay.
//
// The sessions, retirements and cuts still queued when Close is called,
// and the batch being written, are written and published first, so that a
// graceful shutdown does not lose to the farm the sessions issued in its
// last moments; where the transport works, what was kept from an earlier
// outage is replayed too. This wait is bounded by OpTimeout: when it is
// up, the write in flight is cancelled (a transport that cannot abort one
// gives up at its own deadline, OpTimeout after it began) and what is
// left is dropped, as it was before Close waited. A path whose transport
// was failing when Close began (its last write failed, or the store's
// did, or the bus had reported itself down) is not waited for: its write
// in flight is cancelled and it stops, so a Close during an outage returns
// about as soon as it did before.
//
// Revocations not yet applied farm-wide then get one more try, bounded by
// OpTimeout, and a last tally goes out (see Config.TallyInterval), bounded
// by a quarter of it, unless the transport was failing (the bus had reported
// itself down, the queues did not empty in time, or a publish failed
// within OpTimeout before Close began, or since; a publish that Close
// itself cancelled is no failure); a tally in flight when Close began (on a hung transport) may
// hold it back as long. With Config.RevocationFile, the retirements and cuts not yet
// written and published (kept, still queued, or in a write cancelled
// above) are written to the lifecycle file for the next Join. In all,
// Close takes at most about OpTimeout longer than it would without the
// wait: two to three times OpTimeout in the worst case, usually far less.
// Close may be called more than once; the end of Join's context calls it
// (and so waits for the queues the same way). Without Config.RevocationFile,
// revocations still pending at the end are lost, and Close logs how many.
func (n *Node) Close() error {
	return n.close(context.Background(), false)
}

// Shutdown is Close with a longer last try for the revocations: those not
// yet applied farm-wide are retried, at the pace of the node's retries,
// until they are or until ctx is done, rather than for one OpTimeout. A
// daemon that stops with a store down for a moment uses it to keep a
// revocation made during the outage, when it has no Config.RevocationFile
// to keep it in; the rest of Close keeps its bounds. If ctx is done when
// the last try begins, it gets its OpTimeout, as with Close.
// Like Close, Shutdown may be called more than once, and after Close.
func (n *Node) Shutdown(ctx context.Context) error {
	return n.close(ctx, true)
}

// close is Close; with bounded, revCtx bounds the revocations' last try
// instead of OpTimeout.
func (n *Node) close(revCtx context.Context, bounded bool) error {
	n.closeOnce.Do(func() {
		n.unhook()
		if n.leave != nil {
			n.leave()
		}
		// Nothing new is queued from here on: let the publishers empty
		// the queues, for at most OpTimeout, while the other goroutines
		// stop (they start no new work meanwhile, such as a probe that
		// would hang as long again on a hung transport).
		select {
		case <-n.busFirst:
			n.busDownAtEnd.Store(!n.connected.Load())
		default: // still connecting: not known to be down
		}
		closing := time.Now()
		n.startClosing()
		n.cancel()
		flushed := make(chan struct{})
		go func() {
			n.pubs.Wait()
			close(flushed)
		}()
		t := time.NewTimer(n.cfg.OpTimeout)
		inTime := true
		select {
		case <-flushed:
		case <-t.C:
			inTime = false
			n.stopPub()
			<-flushed
		}
		t.Stop()
		n.stopPub()
		n.wg.Wait()
		n.trackMu.Lock()
		n.trackClosed = true
		n.trackMu.Unlock()
		n.tracked.Wait()
		if n.pendingRevocations() > 0 {
			// One more try, bounded; what is left stays in
			// Config.RevocationFile, if set, for the next Join.
			ctx, cancel := context.WithTimeout(context.Background(), n.cfg.OpTimeout)
			if bounded && revCtx.Err() == nil {
				ctx, cancel = context.WithCancel(revCtx)
			}
			n.drainRevocations(ctx)
			cancel()
			if left := n.pendingRevocations(); left > 0 && n.cfg.RevocationFile == "" {
				n.log.Error("revocations not applied farm-wide are lost at close (no revocation file): the sessions they revoke may resume on other nodes until they expire",
					"revocations", left, "since_close", time.Since(closing).Round(time.Millisecond).String())
			}
		}
		n.closeRevocations()
		if n.tly.on && inTime && !n.busDownAtEnd.Load() && !n.tly.failedSince(closing.Add(-n.cfg.OpTimeout)) {
			// A last tally, for what the publishers sent since the
			// previous one (tallier has stopped: one sender at a time);
			// not through an outage (the bus reported itself down, the
			// queues did not empty in time, or a publish failed within
			// OpTimeout of Close, or since: the time Close has spent
			// so far does not make a failure old).
			ctx, cancel := context.WithTimeout(context.Background(), n.cfg.OpTimeout)
			n.sendTally(ctx)
			cancel()
		}
		if n.pm.on && inTime && !n.busDownAtEnd.Load() {
			// The node's last message: its peers stop waiting for
			// its answers (see peerMarks).
			ctx, cancel := context.WithTimeout(context.Background(), n.cfg.OpTimeout)
			n.sendMark(ctx, markLeaving)
			cancel()
		}
		if n.lf.path != "" {
			// What is kept, or still queued, goes to the lifecycle file
			// for the next Join, and what this node sent to the sent
			// file, for the re-sends peers ask of the next one.
			n.keepQueued()
			n.saveLife()
			n.saveSent()
		}
		if stop := n.stopWatch.Load(); stop != nil {
			(*stop)()
		}
	})
	return nil
}

// logOnce logs err the first time in a run of failures.
func (n *Node) logOnce(flag *atomic.Bool, msg string, err error) {
	if flag.CompareAndSwap(false, true) {
		n.log.Warn(msg, "err", err)
	}
}
