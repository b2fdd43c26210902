package farm

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/metric"
	"github.com/tlsfarm/tlsfarm/ticket"
)

// Store keys of the rotation protocol.
const (
	keySetKey   = "ticket-keys"
	keyLeaseKey = "ticket-keys-lease"
)

// keySetContext is the additional data of a sealed key set: a sealed value
// of any other kind does not open as a key set.
var keySetContext = []byte("ticket-keys")

// A RotationConfig configures farm-wide ticket key rotation.
type RotationConfig struct {
	// Ring holds this node's keys and applies them to its tls.Configs. The
	// rotation owns it: nothing else should Rotate, Update or Run it. A
	// ring fresh from ticket.NewRing (epoch 0) adopts the farm's key set at
	// once, less the keys that the rotations due since the set was written
	// (one per Interval, by the store's clock; by the node's, for a set
	// announced on the bus) would have dropped, by the Interval and Keep
	// of the lease holder that wrote it (this node's, for a set written
	// by a version that did not record them); if they
	// would have dropped them all, it waits for a newer set, which the
	// lease holder writes from its own keys when it finds none newer.
	Ring *ticket.Ring

	// Interval is how long each key encrypts before the next takes over
	// (default ticket.DefaultInterval). Each key is in every node's decrypt
	// set for one Interval before any node encrypts with it, and decrypts
	// for Keep intervals after it stops encrypting.
	Interval time.Duration

	// Keep is how many previous keys still decrypt (default
	// ticket.DefaultKeep). A ticket lives at most (Keep+1) × Interval.
	Keep int

	// LeaseTTL is how long the rotation lease lasts unless renewed (default
	// Interval/4, at most 30s). If the holder dies, another node takes the
	// lease within LeaseTTL plus one poll.
	LeaseTTL time.Duration

	// PollInterval is how often a node re-reads the key set, in case it
	// missed an announcement, and the holder renews its lease (default
	// LeaseTTL/3; never more than LeaseTTL/2 or Interval/4). A node that
	// waits for the farm's keys (see Rotator.WaitReady) and finds only a
	// set whose keys have all rotated out re-reads every 100–250 ms
	// instead, for up to LeaseTTL + PollInterval, until the lease holder
	// writes a new set.
	PollInterval time.Duration

	// ExportOnly says that no ticket is ever encrypted with the ring's
	// keys before the ring holds a farm key set: the member only hands the
	// farm's sets on (tlsfarm keys exports no set of epoch 0). Such a
	// ring's own keys are never merged into the farm's set, even when the
	// store was unreachable at start (a member that serves meanwhile
	// merges its keys once the store is back; see WaitReady); it takes the
	// farm's set as a fresh ring does.
	ExportOnly bool
}

// A Rotator keeps a node's ticket keys in step with the farm's: one node at a
// time holds a lease in the store and rotates the farm's key set when it is
// due; every node applies a newer key set when it is announced on the bus and
// when it polls the store. Make one with Node.RotateTicketKeys.
type Rotator struct {
	n     *Node
	cfg   RotationConfig
	token []byte

	wake   chan struct{}
	cancel context.CancelFunc
	done   chan struct{}

	mu       sync.Mutex // serializes steps and announcements
	holder   atomic.Bool
	lastErr  atomic.Value // string
	rotated  atomic.Uint64
	applied  atomic.Uint64
	ignored  atomic.Uint64
	invalid  atomic.Uint64
	storeErr atomic.Uint64
	acquired atomic.Uint64
	merged   atomic.Uint64
	// stepsBegun, stepsEnded count the steps of the loop (see step),
	// for the tests: steps run one at a time, so step number k has
	// ended once stepsEnded reaches k.
	stepsBegun, stepsEnded atomic.Uint64

	// served: the ring's keys may have encrypted tickets the farm does not
	// know (the node served before it had the farm's keys).
	served atomic.Bool
	// warnedSchedule: the node logged that its Interval or Keep differ
	// from the farm set's.
	warnedSchedule atomic.Bool
	readyOnce      sync.Once
	ready          chan struct{}
	readyErr       error
}

// RotateTicketKeys starts farm-wide rotation of the session ticket keys in
// cfg.Ring. It needs the node's Coordinator (Config.Coord, or Config.Store),
// which holds the lease and the key set, and
// returns at once; while the store is unreachable the node keeps its keys and
// keeps trying. The node takes the farm's keys only once it has read the
// farm's revocations (see Join), so that no ticket of a revoked chain
// resumes here. Cancelling ctx stops the rotator abruptly, as a crash would
// (the lease is left to expire); Close stops it and releases the lease.
func (n *Node) RotateTicketKeys(ctx context.Context, cfg RotationConfig) (*Rotator, error) {
	if cfg.Ring == nil {
		return nil, errors.New("farm: RotationConfig.Ring is required")
	}
	if n.cfg.Coord == nil {
		return nil, errors.New("farm: ticket key rotation needs a Store (Config.Coord)")
	}
	if cfg.Interval == 0 {
		cfg.Interval = ticket.DefaultInterval
	}
	if cfg.Interval < time.Second {
		return nil, fmt.Errorf("farm: rotation interval %v is under 1s", cfg.Interval)
	}
	if cfg.Keep == 0 {
		cfg.Keep = ticket.DefaultKeep
	}
	if cfg.Keep < 0 {
		return nil, fmt.Errorf("farm: RotationConfig.Keep is negative")
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = min(cfg.Interval/4, 30*time.Second)
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = cfg.LeaseTTL / 3
	}
	cfg.PollInterval = min(cfg.PollInterval, cfg.LeaseTTL/2, cfg.Interval/4)

	tok := make([]byte, 16)
	crand.Read(tok)
	r := &Rotator{
		n:     n,
		cfg:   cfg,
		token: []byte(n.cfg.NodeName + "/" + hex.EncodeToString(tok)),
		wake:  make(chan struct{}, 1),
		done:  make(chan struct{}),
		ready: make(chan struct{}),
	}
	r.lastErr.Store("")
	n.handle(msgKeys, r.onAnnounce)
	// The keys are farm-wide: every node accepts the farm's tickets, so
	// that a node cut off from the farm can fall back to them. (Once the
	// node rotates, the fallback is updateFallback's to set.)
	if !n.rotating.Load() {
		n.cfg.Cache.SetTicketFallback(0)
	}
	n.rotating.Store(true)
	n.updateFallback()
	ctx, r.cancel = context.WithCancel(ctx)
	go r.loop(ctx)
	return r, nil
}

// Close stops the rotator, unregisters its handler of key announcements,
// and releases the lease if this node holds it, so that another node can
// take over at once.
func (r *Rotator) Close() error {
	r.n.handle(msgKeys, nil)
	r.cancel()
	<-r.done
	if r.holder.Load() {
		ctx, cancel := context.WithTimeout(context.Background(), r.n.cfg.OpTimeout)
		defer cancel()
		// Swap our token for an expiring marker: nobody else's lease is touched.
		r.n.cfg.Coord.CompareAndSwap(ctx, keyLeaseKey, r.token, []byte("released"), time.Millisecond)
		r.holder.Store(false)
	}
	return nil
}

// Metrics returns the rotator's counters, named as the admin API exports
// them (tlsfarm_ticket_*): whether this node holds the rotation lease, the
// rotations it performed, the key sets it applied, ignored, merged or
// could not decode, and its failed store operations. The key set in use is
// the Ring's (ticket.Ring.Status).
func (r *Rotator) Metrics() []metric.Sample {
	var m samples
	m.gauge("tlsfarm_ticket_rotation_lease_holder", "1 while this node holds the farm's key rotation lease.", b2f(r.holder.Load()))
	m.counter("tlsfarm_ticket_rotations_total", "Farm key rotations this node performed.", r.rotated.Load())
	m.counter("tlsfarm_ticket_key_sets_applied_total", "Newer farm key sets applied here.", r.applied.Load())
	m.counter("tlsfarm_ticket_rotation_store_errors_total", "Failed store operations of key rotation.", r.storeErr.Load())
	m.counter("tlsfarm_ticket_key_sets_invalid_total", "Key sets that opened but did not decode.", r.invalid.Load())
	m.counter("tlsfarm_ticket_rotation_leases_acquired_total", "Times this node acquired the farm's key rotation lease.", r.acquired.Load())
	m.counter("tlsfarm_ticket_key_sets_ignored_total", "Key set announcements not newer than the key set in use.", r.ignored.Load())
	m.counter("tlsfarm_ticket_key_sets_merged_total", "Key sets this node merged with its own and wrote back.", r.merged.Load())
	return m
}

// Quick re-polls of a node that waits for the farm's keys behind a stale
// set: every repollMin plus up to repollJitter, never slower than
// PollInterval.
const (
	repollMin    = 100 * time.Millisecond
	repollJitter = 150 * time.Millisecond
)

func (r *Rotator) loop(ctx context.Context) {
	defer close(r.done)
	t := time.NewTicker(r.cfg.PollInterval)
	defer t.Stop()
	// waitingSince: when a step first found only a stale set while the
	// node waited for the farm's keys (zero: it has not).
	var waitingSince time.Time
	for {
		var quick <-chan time.Time
		if r.step(ctx) {
			// The lease holder writes a set above the stale one (this
			// node, if it takes the lease): look again soon rather than
			// a poll later, when the node has likely stopped waiting,
			// served with keys of its own and must merge them. Only
			// for as long as it takes another node to take a lease
			// left behind and write.
			if waitingSince.IsZero() {
				waitingSince = time.Now()
			}
			if time.Since(waitingSince) < r.cfg.LeaseTTL+r.cfg.PollInterval {
				quick = time.After(min(r.cfg.PollInterval, repollMin+rand.N(repollJitter)))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.wake:
		case <-quick:
		}
	}
}

// step reads the farm's key set and applies it if newer; then, if this node
// holds (or can take) the lease, creates or rotates the key set when due.
// It reports whether the node still waits for the farm's keys (see
// WaitReady) having found only a set it takes nothing from (see aged).
func (r *Rotator) step(parent context.Context) (waiting bool) {
	r.stepsBegun.Add(1)
	defer r.stepsEnded.Add(1)
	r.mu.Lock()
	defer r.mu.Unlock()
	store := r.n.cfg.Coord

	if !r.n.revsKnown.Load() {
		// The farm's keys would decrypt tickets of chains the farm has
		// revoked: not before the node knows which (see Join). The
		// read has a bound of its own (tombstoneTimeout).
		if err := r.n.readTombstones(parent); err != nil {
			r.fail(err)
			r.markReady(err)
			return
		}
	}
	ctx, cancel := context.WithTimeout(parent, r.n.cfg.OpTimeout)
	defer cancel()
	// From the primary: the set is replaced there (CompareAndSwap), and
	// one read from a replica that lags is an old set, which the swap
	// then never matches while the replica is cut off.
	raw, err := store.Get(transport.PrimaryRead(ctx), keySetKey)
	var cur *keySet
	// stale: the stored set is one this ring takes nothing from, because
	// the rotations due since it was written would have dropped every key
	// of it (see aged); staleEpoch is its epoch.
	var stale bool
	var staleEpoch uint64
	switch {
	case errors.Is(err, transport.ErrNotFound):
		r.lastErr.Store("")
	case err != nil:
		r.fail(err)
		r.markReady(err)
		return
	default:
		r.lastErr.Store("")
		ks, err := r.openKeySet(raw)
		if err == nil {
			r.checkSchedule(ks)
		}
		mine := r.cfg.Ring.State()
		if err == nil && mine.Epoch == 0 {
			// This ring holds no farm set yet: it takes the stored one
			// only as the rotations due since it was written leave it.
			now, terr := store.Time(ctx)
			if terr != nil {
				r.fail(terr)
				r.markReady(terr)
				return
			}
			var ok bool
			if ks, ok = aged(ks, now, r.cfg.Interval, r.cfg.Keep); !ok {
				stale, staleEpoch = true, ks.st.Epoch
			}
		}
		if err != nil {
			// Not ours, or tampered with: never build on it. The holder
			// replaces it below only by compare-and-swap.
			r.invalid.Add(1)
		} else if stale {
			// Every key of it would have rotated out: the holder
			// writes a set of this ring's keys above it (below), as
			// for a store with none.
			r.n.log.Warn("farm: the stored ticket key set is older than its keys live; not taken (the farm stopped rotating, or the set was put back)",
				"epoch", ks.st.Epoch, "rotated", ks.st.Rotated)
		} else if needsMerge(ks.st, mine, r.served.Load()) {
			// Never accept a split: write back the union, under a new
			// epoch, fenced by the bytes just read.
			r.mergeInto(ctx, raw, ks, mine)
			return
		} else {
			cur = &ks
			r.apply(ks)
		}
	}
	if !stale || r.served.Load() {
		// A ring that never served and found only a stale set is
		// ready once the farm has a set it can take: one written
		// below, or at a later poll.
		r.markReady(nil)
	}
	// Unless it writes one below.
	waiting = stale && !r.isReady() && !r.served.Load()

	if !r.lease(ctx) {
		return
	}
	now, err := store.Time(ctx)
	if err != nil {
		r.fail(err)
		return
	}
	var next ticket.State
	var nextSet keySet
	switch {
	case cur == nil:
		// The farm has no key set yet (or an unreadable one): start from
		// ours, so tickets this node already issued stay valid.
		next = r.cfg.Ring.State()
		next.Epoch = max(next.Epoch, staleEpoch) + 1
		next.Rotated = now
		nextSet = keySet{st: next, interval: r.cfg.Interval, keep: r.cfg.Keep}
	case now.Sub(cur.st.Rotated) >= r.cfg.Interval:
		if nextSet, err = cur.successor(now, r.cfg.Interval, r.cfg.Keep); err != nil {
			r.fail(err)
			return
		}
		next = nextSet.st
	default:
		return
	}
	body, err := nextSet.bytes()
	if err != nil {
		r.fail(err)
		return
	}
	sealed := r.seal(msgKeys, body, keySetContext)
	ok, err := store.CompareAndSwap(ctx, keySetKey, raw, sealed, 0)
	if err != nil {
		r.fail(err)
		return
	}
	if !ok {
		return // someone else wrote first: the next poll reads theirs (soon, if waiting)
	}
	if cur != nil {
		r.rotated.Add(1)
	}
	r.apply(nextSet)
	r.markReady(nil)
	waiting = false
	r.n.log.Info("farm: ticket keys rotated", "epoch", next.Epoch, "current", next.Current.String())
	// Announce; nodes that miss it read the store at their next poll.
	msg := r.seal(msgKeys, body, nil)
	pctx, pcancel := context.WithTimeout(context.Background(), r.n.cfg.OpTimeout)
	defer pcancel()
	if err := r.n.publish(pctx, msg); err != nil {
		r.fail(err)
	}
	return
}

// lease renews the lease if this node holds it, or tries to take it, and
// reports whether this node holds it now.
func (r *Rotator) lease(ctx context.Context) bool {
	store := r.n.cfg.Coord
	var ok bool
	var err error
	if r.holder.Load() {
		ok, err = store.CompareAndSwap(ctx, keyLeaseKey, r.token, r.token, r.cfg.LeaseTTL)
	}
	if !ok && err == nil {
		if ok, err = store.SetNX(ctx, keyLeaseKey, r.token, r.cfg.LeaseTTL); ok {
			r.acquired.Add(1)
			r.n.log.Info("farm: holding the ticket key rotation lease")
		}
	}
	if err != nil {
		r.fail(err)
		ok = false
	}
	r.holder.Store(ok)
	return ok
}

// checkSchedule logs, once, that the farm's set ks was written by a lease
// holder with another Interval or Keep than this node's: the farm rotates
// on the holder's schedule, and this node rotates on its own if it takes
// the lease.
func (r *Rotator) checkSchedule(ks keySet) {
	if ks.interval == 0 || (ks.interval == r.cfg.Interval && ks.keep == r.cfg.Keep) {
		return
	}
	if r.warnedSchedule.CompareAndSwap(false, true) {
		r.n.log.Warn("farm: the farm's ticket key set was written with another rotation interval or keep than this node's; the farm rotates on its lease holder's",
			"farm_interval", ks.interval, "farm_keep", ks.keep, "interval", r.cfg.Interval, "keep", r.cfg.Keep)
	}
}

// seal seals a key set body with this node's header.
func (r *Rotator) seal(t envType, body, context []byte) []byte {
	return r.n.keys.seal(nil, header{typ: t, time: r.n.cfg.Now(), sender: r.n.instance, farm: r.n.cfg.Farm}, body, context)
}

func (r *Rotator) openKeySet(raw []byte) (keySet, error) {
	_, body, err := r.n.keys.open(raw, r.n.cfg.Farm, msgKeys, keySetContext, r.n.cfg.Now(), 0, 0)
	if err != nil {
		return keySet{}, err
	}
	defer clear(body)
	return parseKeySet(body)
}

// mergeInto writes back, by compare-and-swap from raw, the farm's set ks
// merged with this node's set mine, then applies and announces it.
func (r *Rotator) mergeInto(ctx context.Context, raw []byte, ks keySet, mine ticket.State) {
	// The merged set goes on with the farm's schedule (this node's may
	// differ, as in a rolling change of the interval): see merge. Keys of
	// this node's that the farm retired on that schedule while the node
	// missed its rotations stay retired.
	now, err := r.n.cfg.Coord.Time(ctx)
	if err != nil {
		r.fail(err)
		return
	}
	interval, keep := ks.schedule(r.cfg.Interval, r.cfg.Keep)
	mine = withoutLapsed(mine, now, interval, keep)
	merged := merge(ks, mine, r.cfg.Interval, r.cfg.Keep)
	body, err := merged.bytes()
	if err != nil {
		r.fail(err)
		return
	}
	defer clear(body)
	ok, err := r.n.cfg.Coord.CompareAndSwap(ctx, keySetKey, raw, r.seal(msgKeys, body, keySetContext), 0)
	if err != nil {
		r.fail(err)
		return
	}
	if !ok {
		r.signal() // someone wrote first: read theirs, and merge again if need be
		return
	}
	r.merged.Add(1)
	r.apply(merged)
	r.markReady(nil)
	switch {
	case ks.st.Epoch < mine.Epoch:
		// The farm's set was older than this node's: the node's own set
		// went in (see merge), its current key still encrypting.
		r.n.log.Warn("farm: replaced the farm's older ticket key set with this node's (the store held a set the farm had rotated past)",
			"epoch", merged.st.Epoch, "current", merged.st.Current.String())
	case mine.Epoch == 0:
		// This node never held a farm set: it served with keys of its
		// own because none had reached it, as every node of a new farm
		// but the first to take the lease does when they start
		// together. Nothing was lost: expected, not a warning.
		r.n.log.Info("farm: took the farm's ticket key set; the keys this node served with before it reached the node only decrypt now",
			"epoch", merged.st.Epoch, "current", merged.st.Current.String(), "decrypt_only_added", merged.extra)
	default:
		r.n.log.Warn("farm: merged this node's ticket keys with the farm's (the store lost its key set, or this node served without it); its keys only decrypt now",
			"epoch", merged.st.Epoch, "current", merged.st.Current.String(), "decrypt_only_added", merged.extra)
	}
	pctx, cancel := context.WithTimeout(context.Background(), r.n.cfg.OpTimeout)
	defer cancel()
	if err := r.n.publish(pctx, r.seal(msgKeys, body, nil)); err != nil {
		r.fail(err)
	}
}

func (r *Rotator) signal() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// markReady records the outcome of the first poll: nil once the node holds
// the farm's keys (or the farm has none yet), else why it could not get
// them. A node that serves with keys of its own from then on contributes
// them when it merges.
func (r *Rotator) markReady(err error) {
	r.readyOnce.Do(func() {
		if (err != nil || r.cfg.Ring.State().Epoch == 0) && !r.cfg.ExportOnly {
			r.served.Store(true)
		}
		r.readyErr = err
		close(r.ready)
	})
}

// isReady reports whether markReady has run.
func (r *Rotator) isReady() bool {
	select {
	case <-r.ready:
		return true
	default:
		return false
	}
}

// WaitReady waits until the node holds the farm's ticket keys, read (and
// merged, if need be) at the rotator's first poll of the store, and returns
// nil. If the store holds only a set whose keys have all rotated out on
// schedule (see RotationConfig.Ring), it waits for the poll that finds the
// set the lease holder writes above it; the node polls quickly meanwhile
// (see RotationConfig.PollInterval). If that poll finds the store unreachable, or ctx ends first, it
// returns why: the node then serves with keys of its own, and contributes
// them to the farm's set as decrypt-only keys once the store is back, so
// that no ticket it issued meanwhile is lost. A server calls it, with a
// bounded ctx, before it accepts connections.
func (r *Rotator) WaitReady(ctx context.Context) error {
	select {
	case <-r.ready:
		return r.readyErr
	case <-ctx.Done():
		if r.cfg.Ring.State().Epoch == 0 && !r.cfg.ExportOnly {
			r.served.Store(true)
		}
		return fmt.Errorf("farm: no ticket keys from the farm yet: %w", ctx.Err())
	}
}

// apply installs ks if it is newer than the key set in use, with the
// keys it records as merged.
func (r *Rotator) apply(ks keySet) bool {
	from, to := ks.mergedKeys()
	err := r.cfg.Ring.SetMerged(ks.st, from, to)
	switch {
	case err == nil:
		r.applied.Add(1)
		return true
	case errors.Is(err, ticket.ErrStaleEpoch):
		return false
	default:
		r.invalid.Add(1)
		return false
	}
}

// onAnnounce handles a key set announced on the bus; the node has already
// checked its seal, farm and age.
func (r *Rotator) onAnnounce(h header, body []byte) {
	defer clear(body)
	ks, err := parseKeySet(body)
	if err != nil {
		r.invalid.Add(1)
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.n.revsKnown.Load() {
		// Not before the node knows the farm's revocations (see step);
		// its polls take the farm's keys once it does.
		r.ignored.Add(1)
		return
	}
	mine := r.cfg.Ring.State()
	if mine.Epoch == 0 {
		// As step takes a stored set, as of now: not as of the
		// announcement's seal, which may be up to MaxAge older (a bus
		// message resent by someone who can replay them), while the
		// rotations due meanwhile drop keys.
		var ok bool
		if ks, ok = aged(ks, later(h.time, r.n.cfg.Now()), r.cfg.Interval, r.cfg.Keep); !ok {
			r.ignored.Add(1)
			return
		}
	}
	if needsMerge(ks.st, mine, r.served.Load()) {
		// Adopting it would drop keys this node encrypted with: merge
		// through the store at once instead.
		r.ignored.Add(1)
		r.signal()
		return
	}
	if !r.apply(ks) {
		// Not newer than what we hold: a replay, or our own news.
		r.ignored.Add(1)
	}
}

// later returns the later of a and b.
func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func (r *Rotator) fail(err error) {
	r.storeErr.Add(1)
	msg := err.Error()
	if old, _ := r.lastErr.Swap(msg).(string); old != msg {
		r.n.log.Warn("farm: ticket key rotation: store unavailable; keeping the current keys", "err", err)
	}
}
