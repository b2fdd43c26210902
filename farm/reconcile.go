package farm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/retry"
	"github.com/tlsfarm/tlsfarm/session"
)

// The pace of a reconcile (see Node.reconcile): it reads the store
// reconcilePage records at a time, and rests between two pages at least as
// long as the last page took (and at least reconcileRest), so that it keeps
// the store at most about half busy on its account however large the
// cache. Without a transport.RecordGetter it reads a page with
// reconcileReaders GetRecord calls at a time. A pass that fails is tried
// again after a backoff from reconcileRetryMin to reconcileRetryMax.
const (
	reconcilePage     = 256
	reconcileRest     = 5 * time.Millisecond
	reconcileReaders  = 8
	reconcileRetryMin = time.Second
	reconcileRetryMax = time.Minute
)

// reconcileResult counts what reconciles found (tlsfarm_farm_reconcile_total).
type reconcileResult int

const (
	reconcileChecked  reconcileResult = iota // a cached session read from the store
	reconcileRetired                         // its record was gone: retired here
	reconcileCut                             // its record ended earlier: cut here
	reconcileSkipped                         // not stored yet by this node (queued, kept for later, being written)
	reconcileRejected                        // its record did not open: left as it was
	reconcileDropped                         // no store, and the bus may have lost messages: dropped
	numReconcileResults
)

// reconcileState is what the node knows of its subscription's outages, for
// the reconciler.
type reconcileState struct {
	mu        sync.Mutex
	downSince time.Time // when the subscription went down; zero while up
	downGen   []byte    // the store's generation then, as last read (nil: unknown)
	since     time.Time // earliest outage not reconciled yet; zero if none
	sinceGen  []byte    // the store's generation when that outage began
	ask       bool      // ask the peers to re-send everything unless the next pass vouches for the cache (see settleGap)
	loud      bool      // a gap not reconciled yet is more than a drop in a subscription that stayed up: the pass logs its success
	gen       uint64    // outages ended so far
	wasUp     bool      // the subscription was up before (the bus may have kept messages since)
	wake      chan struct{}

	results    [numReconcileResults]atomic.Uint64
	runs, fail atomic.Uint64
	lost       atomic.Uint64 // passes given up: the store lost its data
	kept       atomic.Uint64 // outages the bus kept every message of: no pass
	drops      atomic.Uint64 // outages with a gap and no store: the cache dropped
	page       atomic.Int32  // page size, if set (tests); else reconcilePage
}

// busDown notes that the node's subscription is down (from now, unless it
// was already).
func (n *Node) busDown(now time.Time) {
	gen := n.storeGeneration()
	r := &n.recon
	r.mu.Lock()
	if r.downSince.IsZero() {
		r.downSince, r.downGen = now, gen
	}
	r.mu.Unlock()
}

// storeGeneration returns the store's generation record as last read
// (see checkGeneration), or nil.
func (n *Node) storeGeneration() []byte {
	n.genMu.Lock()
	defer n.genMu.Unlock()
	return n.generation
}

// errStoreLost ends a reconcile whose store lost its data since the outage
// began: a record missing then says nothing of a retirement.
var errStoreLost = errors.New("the store lost its data since the bus outage began")

// errNoGeneration ends a reconcile that cannot tell yet whether the store
// lost its data: the node has not read the generation record.
var errNoGeneration = errors.New("the store's generation is not known yet")

// keepsGeneration reports whether the store keeps a generation record
// (see checkGeneration), by which a reconcile tells a store that lost its
// data.
func (n *Node) keepsGeneration() bool {
	_, ok := n.cfg.Records.(transport.RecordTaker)
	return ok
}

// checkSameGeneration returns errStoreLost unless the store's generation
// record is gen and the node is not writing its sessions back to a store
// that lost them (see checkGeneration).
func (n *Node) checkSameGeneration(ctx context.Context, gen []byte) error {
	if !n.keepsGeneration() {
		return nil
	}
	if n.refilling.Load() {
		// The node found the store emptied and has yet to write its
		// sessions back: a record missing now was lost, not retired,
		// even if gen is the new generation (the subscription noticed
		// its outage after the node had read it).
		return errStoreLost
	}
	ctx, cancel := context.WithTimeout(transport.PrimaryRead(ctx), n.cfg.OpTimeout)
	defer cancel()
	v, err := n.cfg.Records.GetRecord(ctx, generationKey)
	switch {
	case errors.Is(err, transport.ErrNotFound):
		return errStoreLost
	case err != nil:
		return err
	case !bytes.Equal(v, gen):
		return errStoreLost
	}
	return nil
}

// busUp notes that the node's subscription is up, with the error the bus
// reported with it, and, if it was down, settles what the node may have
// missed meanwhile: nothing if the bus kept every message (see busKept),
// else the reconciler checks the cache against the store (pub/sub keeps
// nothing, so the retirements and grace cuts published meanwhile are only
// in the store), or, with no store, the node drops what it cannot vouch
// for (see dropUnvouched); and the node asks its peers to re-send the
// retirements and cuts they hold, and re-sends its own (see resendState):
// settleGap, which a tally that finds messages missing calls too.
// It runs on the subscription's goroutine, before
// the bus delivers anything more.
func (n *Node) busUp(err error, cause gapCause) {
	r := &n.recon
	r.mu.Lock()
	down, gen := r.downSince, r.downGen
	r.downSince, r.downGen = time.Time{}, nil
	wasUp := r.wasUp
	r.wasUp = true
	if down.IsZero() {
		r.mu.Unlock()
		return
	}
	// Before its first subscription the bus kept nothing for the node.
	if wasUp && n.busKept(down, err) {
		r.mu.Unlock()
		r.kept.Add(1)
		n.log.Info("farm: the bus kept what was published while the subscription was down; nothing to check",
			"since_bus_lost", n.cfg.Now().Sub(down).Round(time.Millisecond).String())
		return
	}
	r.mu.Unlock()
	n.settleGap(down, gen, cause)
}

// A gapCause says how the node found that the bus may have lost messages
// for it.
type gapCause uint8

const (
	gapOutage  gapCause = iota // its subscription was down (busUp)
	gapLoss                    // a peer's tally found messages missing (receiveTally)
	gapDropped                 // the bus dropped messages with the subscription up (transport.ErrMessagesDropped): busState logs it, at most once a minute, and the settle does not
)

// settleGap settles a gap: the peers' retirements and cuts published since
// about since may be lost to this node. It sends this node's again (its own
// may be lost to peers that had the gap too, or to a store that failed over;
// see resendState); then, with a store, it has the reconciler check the
// cache against it (gen: the store's generation as of since, as last read,
// or nil), and asks the peers at once for what they hold (Node.held: kept
// after a failed write, maybe published and not stored), and for all they
// keep only if that pass cannot vouch for the cache (see reconciler); with
// none, it asks for everything at once, and drops what it cannot vouch for
// (dropUnvouched) unless Config.KeepAfterBusGap. It returns what it did
// ("reconcile", "dropped" or "kept") and how many sessions it dropped. It
// runs on the subscription's goroutine, before the bus delivers anything
// more. Unless it keeps the cache as it is, it notes when the settle began
// (noteSettle): a peer's new sessions sealed before then and delivered
// after are not inserted (see fromBeforeGap).
//
// A request for everything makes every peer re-send what it keeps (up to
// QueueSize items each), and every node receives all of it: a gap that asked
// for everything whatever the pass found could feed itself. A subscriber
// that Redis drops for the size of its output buffer
// (client-output-buffer-limit pubsub) while those re-sends pour in comes
// back with a gap of its own, asks again, and is dropped again, for as long
// as it stays slow (TestResendStormStops).
func (n *Node) settleGap(since time.Time, gen []byte, cause gapCause) (dropped int, action string) {
	n.restartReach()
	n.wantResend()
	if n.cfg.Records == nil {
		n.wantResendAsk()
		if n.cfg.KeepAfterBusGap {
			return 0, "kept"
		}
		n.noteSettle()
		return n.dropUnvouched(since, cause), "dropped"
	}
	n.noteSettle()
	r := &n.recon
	r.mu.Lock()
	if r.since.IsZero() || since.Before(r.since) {
		r.since, r.sinceGen = since, gen
	}
	r.loud = r.loud || cause != gapDropped
	r.ask = true
	r.gen++
	r.mu.Unlock()
	n.wantHeldAsk()
	select {
	case r.wake <- struct{}{}:
	default:
	}
	return 0, "reconcile"
}

// busKept reports whether the bus kept, and will deliver, every message
// published since the subscription went down (at down), by what it
// reported with the state up (err): it must be a transport.MessageKeeper
// that reported no loss. And the outage must have lasted at most half of
// the age up to which the messages that restrict what may resume —
// retirements, grace cuts, revocations — are taken (see maxAgeFor: the
// cache's Lifetime, never less than MaxAge): an older one is refused
// however it was kept, and the other half leaves room for the queue to
// drain, for clocks to differ, and for the time the node took to notice
// the connection was dead (two heartbeats on RabbitMQ, 10s by default;
// the broker gives back what it had sent into the dead connection). The
// new sessions the bus kept that are older than MaxAge are not inserted
// (see receiveOldSessions): that costs their clients a full handshake
// here, never a resumption the farm no longer allows.
func (n *Node) busKept(down time.Time, err error) bool {
	k, ok := n.cfg.Bus.(transport.MessageKeeper)
	return ok && k.KeepsMessages() && err == nil && n.cfg.Now().Sub(down) <= min(n.cutAge, n.revokeAge)/2
}

// dropUnvouched drops from the cache, and from the sessions held as
// received (lazy peers), every session the node holds: the bus may have
// lost retirements, grace cuts and revocations published since down, and
// without a store the node cannot tell which of its copies the farm no
// longer resumes. The drop is local: sessions leave the cache as retired
// by a peer (session.OriginPeer), which publishes nothing, and are not
// remembered as retired (a peer's later copy is welcome). It runs before
// the bus delivers anything published after the subscription came back
// (or after the tally that found messages missing); a session a handshake
// here inserts while it walks the cache may go too. It returns how many
// sessions it dropped, and logs them after an outage (after a loss,
// receiveTally logs; after a gap in a subscription that stayed up,
// busState, at most once a minute).
func (n *Node) dropUnvouched(down time.Time, cause gapCause) int {
	start := time.Now()
	dropped := 0
	if n.pend != nil {
		dropped += n.pend.dropAll()
	}
	for id := range n.cfg.Cache.Expiries() {
		if n.cfg.Cache.Retire(id, session.OriginPeer) {
			dropped++
		}
	}
	n.recon.results[reconcileDropped].Add(uint64(dropped))
	n.recon.drops.Add(1)
	if cause != gapOutage {
		return dropped
	}
	n.log.Warn("farm: the bus may have lost messages while the subscription was down, and there is no store to check against: dropped the cached sessions",
		"dropped", dropped, "since_bus_lost", start.Sub(down).Round(time.Millisecond).String(),
		"took", time.Since(start).Round(time.Millisecond).String())
	return dropped
}

// reconciler runs the reconciles busUp asks for, one at a time, until ctx
// is done; a reconcile that fails is tried again, with backoff.
func (n *Node) reconciler(ctx context.Context) {
	defer n.wg.Done()
	r := &n.recon
	var again <-chan time.Time
	for failures := 0; ; {
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		case <-again:
		}
		again = nil
		r.mu.Lock()
		since, storeGen, gen, loud := r.since, r.sinceGen, r.gen, r.loud
		r.mu.Unlock()
		if since.IsZero() || !n.connected.Load() {
			continue // nothing to do, or down again: the next busUp asks
		}
		err := n.reconcile(ctx, since, storeGen, loud)
		if ctx.Err() != nil {
			return
		}
		// A pass that checked the whole cache against a store that kept
		// its data has found what the gap cost this node of the peers'
		// retirements and cuts that reached the store; the rest, those
		// the peers hold, settleGap asked for. Anything else asks the
		// peers to re-send everything, once per gap: a store that lost
		// its data (as the write-back does too), one that fails, or a
		// generation not read yet. (A pass that ends after a newer gap
		// leaves that one to the next pass.)
		r.mu.Lock()
		ask := r.ask && err != nil
		if err != nil || r.gen == gen {
			r.ask = false
		}
		r.mu.Unlock()
		if ask {
			n.wantResendAsk()
		}
		if errors.Is(err, errStoreLost) {
			// Nothing left to reconcile from (the node writes its
			// sessions back: see checkGeneration).
			err = nil
		}
		if err != nil {
			// Each pass reads the whole cache's records from the
			// store: not every couple of seconds through a store
			// outage.
			failures++
			again = time.After(retry.Backoff(failures, reconcileRetryMin, reconcileRetryMax))
			continue
		}
		failures = 0
		r.mu.Lock()
		if r.gen == gen {
			r.since, r.loud = time.Time{}, false
		} else {
			// Down and up again meanwhile: what the pass read before
			// may have changed since; once more.
			again = time.After(0)
		}
		r.mu.Unlock()
	}
}

// reconcile checks every session of the cache against its record in the
// store, which holds the farm's retirements and grace cuts (see
// lifecycleStoreItems): a session whose record is gone is retired here
// (and remembered, so that a late copy from a peer is refused), and one
// whose record ends earlier than the cached copy is cut to the record's
// end. The node's own sessions that are not in the store yet are left
// alone (see reconcilePage). since is when the subscription went down, for
// the log; gen is the store's generation then (nil if the node had not
// read it). A store whose generation changed since has lost its data: the
// reconcile stops at the first read that finds it so, before changing
// anything on that read's account, and returns errStoreLost. A pass that
// succeeds is logged only if loud (see reconcileState.loud): the gaps of a
// slow consumer, up to four a second, are logged by busState.
func (n *Node) reconcile(ctx context.Context, since time.Time, gen []byte, loud bool) error {
	start := time.Now()
	if gen == nil && n.keepsGeneration() {
		if gen = n.storeGeneration(); gen == nil {
			n.recon.fail.Add(1)
			return errNoGeneration
		}
	}
	var before [numReconcileResults]uint64
	for i := range before {
		before[i] = n.recon.results[i].Load()
	}
	size := reconcilePage
	if p := int(n.recon.page.Load()); p > 0 {
		size = p
	}
	// The sessions held as received first, then the cache: one decoded
	// into the cache meanwhile is found there. The cache is walked a
	// bucket at a time (session.Cache.Expiries), never copied whole: a
	// page of IDs and expiry times is all the pass holds of it.
	pg := reconcilePager{n: n, ctx: ctx, gen: gen, page: make([]reconcileEntry, 0, size)}
	if n.pend != nil {
		for _, e := range n.pend.appendEntries(nil) {
			if !pg.add(e) {
				break
			}
		}
	}
	if pg.err == nil {
		for id, exp := range n.cfg.Cache.Expiries() {
			if !pg.add(reconcileEntry{id: id, expires: exp}) {
				break
			}
		}
	}
	pg.flush()
	err := pg.err
	var c [numReconcileResults]uint64
	for i := range c {
		c[i] = n.recon.results[i].Load() - before[i]
	}
	args := []any{"checked", c[reconcileChecked], "retired", c[reconcileRetired], "cut", c[reconcileCut],
		"skipped", c[reconcileSkipped], "rejected", c[reconcileRejected],
		"since_bus_lost", start.Sub(since).Round(time.Millisecond).String(), "took", time.Since(start).Round(time.Millisecond).String()}
	switch {
	case ctx.Err() != nil:
		return err
	case errors.Is(err, errStoreLost):
		n.recon.lost.Add(1)
		n.log.Warn("farm: the store lost its data since the bus outage began; the retirements and grace cuts missed meanwhile cannot be recovered from it", args...)
		return err
	case err != nil:
		n.recon.fail.Add(1)
		n.log.Warn("farm: checking the cache against the store after the bus outage failed; will try again", append(args, "err", err)...)
		return err
	}
	n.recon.runs.Add(1)
	if loud {
		n.log.Info("farm: checked the cache against the store after the bus outage", args...)
	}
	return nil
}

// A reconcilePager gathers the sessions a reconcile checks into pages,
// and reconciles each page once full (see reconcilePage), resting before
// each page but the first at least as long as the last one took (and at
// least reconcileRest). The first error ends it: err.
type reconcilePager struct {
	n    *Node
	ctx  context.Context
	gen  []byte
	page []reconcileEntry // its capacity is the page size
	last time.Duration    // how long the last page took; 0 before the first
	err  error
}

// add adds e to the page, reconciling the page if that fills it, and
// reports whether the pass goes on.
func (p *reconcilePager) add(e reconcileEntry) bool {
	p.page = append(p.page, e)
	if len(p.page) == cap(p.page) {
		p.flush()
	}
	return p.err == nil
}

// flush reconciles the sessions gathered, if any.
func (p *reconcilePager) flush() {
	if len(p.page) == 0 || p.err != nil {
		return
	}
	if p.last > 0 {
		select {
		case <-p.ctx.Done():
			p.err = p.ctx.Err()
			return
		case <-time.After(max(reconcileRest, p.last)):
		}
	}
	t0 := time.Now()
	p.err = p.n.reconcilePage(p.ctx, p.page, p.gen)
	p.last = max(time.Since(t0), time.Nanosecond)
	p.page = p.page[:0]
}

// A reconcileEntry is a session a reconcile checks: cached, or held as
// received from a peer (lazy peers).
type reconcileEntry struct {
	id      session.ID
	expires time.Time
	pending bool // held by n.pend, not cached
}

// reconcilePage reconciles the sessions of page.
//
// A record may be missing because this node has not written it yet: a new
// session in the publish queue, in the backlog kept after a failed write,
// or in a batch being written (a flight). Retiring it would only cost its
// client a full handshake, but the rule keeps it: a session found missing
// that is then queued, kept or being written is skipped, and the others
// are read once more and looked for in the queues again, so that one
// caught between two of those places, or written just after the first
// read, is not taken for retired. Only a session missing both times and
// unstored neither time is retired. A peer's session that its own node has
// yet to write is retired: a full handshake here, never a resumption the
// farm retired.
func (n *Node) reconcilePage(ctx context.Context, page []reconcileEntry, gen []byte) error {
	ids := make([]session.ID, len(page))
	for i := range page {
		ids[i] = page[i].id
	}
	vals, err := n.readRecords(ctx, ids)
	if err == nil {
		// After the reads: records read before a loss are true.
		err = n.checkSameGeneration(ctx, gen)
	}
	if err != nil {
		return err
	}
	r := &n.recon
	r.results[reconcileChecked].Add(uint64(len(page)))
	var missing []reconcileEntry
	for i, v := range vals {
		if v == nil {
			missing = append(missing, page[i])
			continue
		}
		n.reconcileRecord(&page[i], v)
	}
	if len(missing) == 0 {
		return nil
	}
	pending := n.unstoredIDs()
	again := missing[:0]
	for _, e := range missing {
		if _, ok := pending[e.id]; ok {
			r.results[reconcileSkipped].Add(1)
			continue
		}
		again = append(again, e)
	}
	if len(again) == 0 {
		return nil
	}
	ids = ids[:0]
	for _, e := range again {
		ids = append(ids, e.id)
	}
	vals, err = n.readRecords(ctx, ids)
	if err == nil {
		err = n.checkSameGeneration(ctx, gen)
	}
	if err != nil {
		return err
	}
	pending = n.unstoredIDs()
	now := n.cfg.Now()
	for i, v := range vals {
		e := &again[i]
		if _, ok := pending[e.id]; ok || v != nil {
			r.results[reconcileSkipped].Add(1) // written meanwhile, or about to be
			continue
		}
		n.retired.add(e.id, now)
		if e.pending {
			if n.pend.dropIf(e.id) {
				r.results[reconcileRetired].Add(1)
			}
		} else if n.cfg.Cache.Retire(e.id, session.OriginPeer) {
			r.results[reconcileRetired].Add(1)
		}
	}
	return nil
}

// reconcileRecord cuts the session of e to the end of its stored record
// v, if that is earlier. A session held as received is dropped instead:
// a lookup then loads it from the store, cut.
func (n *Node) reconcileRecord(e *reconcileEntry, v []byte) {
	_, body, err := n.keys.open(v, n.cfg.Farm, valRecord, e.id[:], n.cfg.Now(), 0, n.cfg.MaxSkew)
	var rec session.Record
	if err == nil {
		err = rec.UnmarshalBinary(body)
	}
	if err != nil {
		n.recon.results[reconcileRejected].Add(1)
		return
	}
	if !rec.Expires.Before(e.expires) {
		return
	}
	var ok bool
	if e.pending {
		ok = n.pend.dropIf(e.id)
	} else {
		_, ok = n.cfg.Cache.Cut(e.id, rec.Expires)
	}
	if ok {
		n.recon.results[reconcileCut].Add(1)
		n.noteRecut(e.id, rec.Expires)
	}
}

// readRecords reads the records of ids from the store, nil where one has
// none: in one call if the store is a transport.RecordGetter, else with a
// few GetRecord calls at a time.
func (n *Node) readRecords(ctx context.Context, ids []session.ID) ([][]byte, error) {
	// From the primary, as the generation read after them (see
	// checkSameGeneration): a record missing from a replica that lags
	// may be there on its master, and one a retirement deleted there may
	// still be on the replica.
	ctx, cancel := context.WithTimeout(transport.PrimaryRead(ctx), n.cfg.OpTimeout)
	defer cancel()
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = sessionKey(id)
	}
	if g, ok := n.cfg.Records.(transport.RecordGetter); ok {
		vals, err := g.GetRecords(ctx, keys...)
		if err == nil && len(vals) != len(keys) {
			err = errors.New("farm: the store answered a multi-get with the wrong number of records")
		}
		return vals, err
	}
	vals := make([][]byte, len(keys))
	errs := make([]error, len(keys))
	var wg sync.WaitGroup
	next := atomic.Int64{}
	for range min(reconcileReaders, len(keys)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(keys) || ctx.Err() != nil {
					return
				}
				v, err := n.cfg.Records.GetRecord(ctx, keys[i])
				if !errors.Is(err, transport.ErrNotFound) {
					vals[i], errs[i] = v, err
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return vals, ctx.Err()
}

// unstoredIDs returns the IDs of this node's new sessions that wait to be
// written to the store: in the publish queues and in the backlog.
func (n *Node) unstoredIDs() map[session.ID]struct{} {
	set := make(map[session.ID]struct{})
	n.q.addNewIDs(set)
	if n.sq != nil {
		n.sq.addNewIDs(set)
	}
	n.backlog.addNewIDs(set)
	for i := range n.flights {
		n.flights[i].addIDs(set)
	}
	return set
}

// A flight is the new sessions of the batch a drain is writing, so that a
// reconcile does not take them for retired (see reconcilePage).
type flight struct {
	mu  sync.Mutex
	ids []session.ID
}

// set records the new sessions of batch as being written.
func (f *flight) set(batch []item) {
	f.mu.Lock()
	f.ids = f.ids[:0]
	for i := range batch {
		if it := &batch[i]; it.op == opNew && it.rev == nil {
			f.ids = append(f.ids, it.id)
		}
	}
	f.mu.Unlock()
}

// clear records that the batch's write is over (done, or kept for later).
func (f *flight) clear() {
	f.mu.Lock()
	f.ids = f.ids[:0]
	f.mu.Unlock()
}

func (f *flight) addIDs(set map[session.ID]struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range f.ids {
		set[id] = struct{}{}
	}
}

// addNewIDs adds to set the IDs of the new sessions queued.
func (q *queue) addNewIDs(set map[session.ID]struct{}) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for i := range q.n {
		if it := &q.items[(q.head+i)%len(q.items)]; it.op == opNew && it.rev == nil {
			set[it.id] = struct{}{}
		}
	}
}

// addNewIDs adds to set the IDs of the sessions in the backlog.
func (b *backlog) addNewIDs(set map[session.ID]struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := range b.n {
		if it := &b.items[(b.head+i)%len(b.items)]; it.op == opNew && it.rev == nil {
			set[it.id] = struct{}{}
		}
	}
}

// appendEntries appends to es the sessions held, with their expiries.
func (p *pending) appendEntries(es []reconcileEntry) []reconcileEntry {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, e := range p.m {
		es = append(es, reconcileEntry{id: id, expires: time.Unix(0, int64(binary.BigEndian.Uint64(e.rec[recExpiresAt:]))), pending: true})
	}
	return es
}

// dropIf forgets id, and reports whether it was held.
func (p *pending) dropIf(id session.ID) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.m[id]
	delete(p.m, id)
	return ok
}
