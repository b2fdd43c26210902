package farm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// A RevokeStatus says how far a farm-wide revocation has got.
type RevokeStatus uint8

const (
	// RevokeNotFound: neither this node nor the store knows the session.
	RevokeNotFound RevokeStatus = iota
	// RevokePending: applied on this node and queued for the farm; the
	// node retries, with backoff, until the store holds the tombstone and
	// the bus has carried the revocation.
	RevokePending
	// RevokeApplied: the store holds the tombstone (if there is a store)
	// and the revocation has been published to every node.
	RevokeApplied
)

// String returns "not-found", "pending" or "applied".
func (s RevokeStatus) String() string {
	switch s {
	case RevokeNotFound:
		return "not-found"
	case RevokePending:
		return "pending"
	case RevokeApplied:
		return "applied"
	}
	return "RevokeStatus(?)"
}

// A pendingRev is one revoked chain on its way to the farm.
type pendingRev struct {
	rev       revocation
	ids       []session.ID // stored sessions of the chain to delete
	stored    bool         // tombstone written (or no store)
	published bool
	done      chan struct{} // closed once stored and published
}

// revocations holds the revocations not yet applied farm-wide. It is never
// bounded by dropping: revocations are few and each one matters.
type revocations struct {
	mu      sync.Mutex
	pending []*pendingRev
	byChain map[uint64]*pendingRev // pending, by chain
	wake    chan struct{}
	applied uint64
	retries uint64
}

func (r *revocations) signal() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// add queues a revocation of rev (with stored session id, if known) and
// returns its done channel.
func (n *Node) addRevocation(id session.ID, rev revocation) <-chan struct{} {
	r := &n.revs
	r.mu.Lock()
	p := n.addRevocationLocked(id, rev)
	n.persistLocked()
	r.mu.Unlock()
	r.signal()
	return p.done
}

// addRevocationLocked is addRevocation without writing the file or waking
// the revoker (n.revs.mu is held).
func (n *Node) addRevocationLocked(id session.ID, rev revocation) *pendingRev {
	r := &n.revs
	p := r.byChain[rev.chain]
	if p == nil {
		p = &pendingRev{rev: rev, stored: n.cfg.Coord == nil, done: make(chan struct{})}
		r.pending = append(r.pending, p)
		if r.byChain == nil {
			r.byChain = make(map[uint64]*pendingRev)
		}
		r.byChain[rev.chain] = p
	} else if rev.until.After(p.rev.until) {
		p.rev.until = rev.until
	}
	if id != (session.ID{}) {
		p.ids = append(p.ids, id)
		if n.cfg.Coord != nil {
			p.stored = false // one more key to delete
		}
	}
	return p
}

// pendingRevocations returns the number of revoked chains not yet applied
// farm-wide (written to the store and published).
func (n *Node) pendingRevocations() int {
	n.revs.mu.Lock()
	defer n.revs.mu.Unlock()
	return len(n.revs.pending)
}

// RevokeSession revokes the session id and its whole resumption chain across
// the farm — it stops resuming on every node, including those that only have
// it in the store — and waits (until ctx is done) for the revocation to
// reach the farm. It returns RevokeApplied once the store holds the
// tombstone and the bus has carried it, RevokePending if ctx ended first —
// the revocation is then in force on this node and the node keeps retrying
// (across reconnects; across restarts with Config.RevocationFile) — and
// RevokeNotFound if neither this node nor the store knows id. On a farm
// without a store, a session this node does not hold is RevokeNotFound
// with ErrNoStore: a peer may hold it, and only a node that holds it can
// revoke its chain.
func (n *Node) RevokeSession(ctx context.Context, id session.ID) (RevokeStatus, error) {
	var done <-chan struct{}
	if rec, ok := n.cfg.Cache.Remove(id); ok {
		// The REMOVE hook queued the chain; find it.
		done = n.revocationDone(rec.Chain)
	} else {
		if n.cfg.Records == nil {
			// Peers may hold it: no store to learn its chain from.
			return RevokeNotFound, ErrNoStore
		}
		rec, err := n.fetch(ctx, id)
		if err != nil || rec == nil {
			return RevokeNotFound, err
		}
		rev := revocation{chain: rec.Chain, until: n.cfg.Cache.ChainEnd(*rec)}
		// Tombstone locally (nothing cached, so no REMOVE event).
		n.cfg.Cache.RemoveChain(rev.chain, rev.until, session.OriginPeer)
		done = n.addRevocation(id, rev)
	}
	if done == nil {
		return RevokeApplied, nil
	}
	select {
	case <-done:
		return RevokeApplied, nil
	case <-ctx.Done():
		return RevokePending, nil
	}
}

func (n *Node) revocationDone(chain uint64) <-chan struct{} {
	n.revs.mu.Lock()
	defer n.revs.mu.Unlock()
	for _, p := range n.revs.pending {
		if p.rev.chain == chain {
			return p.done
		}
	}
	return nil
}

// revoker applies pending revocations to the store and the bus, retrying
// with backoff until both succeed.
func (n *Node) revoker(ctx context.Context) {
	defer n.wg.Done()
	failures := 0
	for {
		var wait <-chan time.Time
		if failures > 0 {
			wait = time.After(backoff(failures))
		}
		select {
		case <-ctx.Done():
			return
		case <-n.revs.wake:
			if failures > 0 {
				// Something changed (a new revocation, a reconnect): try
				// again, but not faster than the backoff allows.
				select {
				case <-ctx.Done():
					return
				case <-wait:
				}
			}
		case <-wait:
		}
		if n.applyRevocations(ctx) {
			failures = 0
		} else {
			failures++
		}
	}
}

// applyRevocations tries once to apply every pending revocation, and
// reports whether none is left. It applies them a chunk at a time (at
// most BatchSize revocations), each chunk's store write and publish
// within OpTimeout, and stops at the first chunk that fails: a tombstone
// is one round trip to the store (about 225 µs on Redis here), so a
// long list in one write (the revocations made during a store outage)
// never finished within OpTimeout and was tried again whole, for ever
// (TestManyPendingRevocationsReachTheStore).
func (n *Node) applyRevocations(ctx context.Context) bool {
	r := &n.revs
	r.mu.Lock()
	ptrs := slices.Clone(r.pending)
	r.mu.Unlock()
	if len(ptrs) == 0 {
		return true
	}
	failed := false
	for len(ptrs) > 0 && !failed && ctx.Err() == nil {
		k := min(len(ptrs), n.cfg.BatchSize)
		failed = !n.applyRevocationChunk(ctx, ptrs[:k])
		ptrs = ptrs[k:]
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	kept := r.pending[:0]
	for _, p := range r.pending {
		if p.stored && p.published {
			close(p.done)
			delete(r.byChain, p.rev.chain)
			r.applied++
			continue
		}
		kept = append(kept, p)
	}
	clear(r.pending[len(kept):])
	r.pending = kept
	if failed {
		r.retries++
	}
	n.persistLocked()
	return len(r.pending) == 0
}

// applyRevocationChunk tries once to write the tombstones of ptrs to the
// store and publish them, and reports whether both succeeded. It marks
// what it applied; applyRevocations drops them from the list.
func (n *Node) applyRevocationChunk(ctx context.Context, ptrs []*pendingRev) bool {
	r := &n.revs
	r.mu.Lock()
	work := make([]pendingRev, len(ptrs))
	for i, p := range ptrs {
		work[i] = *p
		work[i].ids = append([]session.ID(nil), p.ids...)
	}
	r.mu.Unlock()
	hdr := header{time: n.cfg.Now(), sender: n.instance, farm: n.cfg.Farm}

	var storeErr, pubErr error
	var toStore, toPublish []revocation
	var dels []string
	for _, w := range work {
		if !w.stored {
			toStore = append(toStore, w.rev)
			for _, id := range w.ids {
				dels = append(dels, sessionKey(id))
			}
		}
		if !w.published {
			toPublish = append(toPublish, w.rev)
		}
	}
	var wg sync.WaitGroup
	if len(toStore) > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
			defer cancel()
			storeErr = n.storeBatch(sctx, hdr, nil, dels, toStore)
		}()
	}
	if len(toPublish) > 0 {
		pubErr = n.publishRevocations(ctx, hdr, toPublish)
	}
	wg.Wait()
	// A node that joins reads the list after it subscribes (see Join). It
	// misses no revocation only if each one is published after its
	// tombstone is in the store: one published before (or while) it was
	// stored goes out once more. Revocations are rare; a repeat costs a
	// peer a map lookup.
	var again []revocation
	if storeErr == nil {
		for _, w := range work {
			if !w.stored && (w.published || pubErr == nil) {
				again = append(again, w.rev)
			}
		}
	}
	var againErr error
	if len(again) > 0 {
		againErr = n.publishRevocations(ctx, hdr, again)
	}
	if storeErr != nil {
		n.ctr.storeWriteErrors.Add(1)
		if ctx.Err() == nil {
			n.logOnce(&n.ctr.storeErrLogged, "farm: revocation not yet in the store; retrying", storeErr)
		}
	}
	if pubErr != nil {
		n.ctr.publishErrors.Add(1)
		if ctx.Err() == nil {
			n.logOnce(&n.ctr.publishErrLogged, "farm: revocation not yet published; retrying", pubErr)
		}
	} else if len(toPublish) > 0 {
		n.ctr.publishedRevocations.Add(uint64(len(toPublish)))
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	for i, p := range ptrs {
		// Only what this attempt covered: ids added meanwhile keep
		// p.stored false.
		if storeErr == nil && !work[i].stored && len(p.ids) == len(work[i].ids) {
			p.stored = true
		}
		if pubErr == nil && !work[i].published {
			p.published = true
		}
		if againErr != nil && storeErr == nil && !work[i].stored {
			p.published = false // once more, now that it is stored
		}
	}
	return storeErr == nil && pubErr == nil && againErr == nil
}

// publishRevocations publishes revs in as many messages as the bus's size
// limit needs (busMessages).
func (n *Node) publishRevocations(ctx context.Context, hdr header, revs []revocation) error {
	items := make([]item, len(revs))
	for i := range revs {
		items[i].rev = &revs[i]
	}
	msgs, _, _ := n.busMessages(hdr, items)
	pctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
	defer cancel()
	return n.publish(pctx, msgs...)
}

// drainRevocations tries, until ctx is done, to apply what is pending (Close
// calls it).
func (n *Node) drainRevocations(ctx context.Context) {
	for failures := 1; !n.applyRevocations(ctx); failures++ {
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff(failures)):
		}
	}
}

// revocationFileContext is the context Config.RevocationFile is sealed
// with (see appendRevocationFile for its body).
const revocationFileContext = "pending-revocations"

// persistLocked writes the pending revocations to Config.RevocationFile, if
// set (n.revs.mu is held). The file is sealed with the farm secret.
func (n *Node) persistLocked() {
	path := n.cfg.RevocationFile
	if path == "" {
		return
	}
	if len(n.revs.pending) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			n.log.Warn("farm: cannot remove the pending revocations file", "err", err)
		}
		return
	}
	var body []byte
	for _, p := range n.revs.pending {
		body = appendRevocationFile(body, p.rev, p.ids)
	}
	hdr := header{typ: valTombstone, time: n.cfg.Now(), sender: n.instance, farm: n.cfg.Farm}
	sealed := n.keys.seal(nil, hdr, body, []byte(revocationFileContext))
	if err := writeFileAtomic(path, sealed); err != nil {
		n.log.Warn("farm: cannot persist pending revocations; they stay in memory and are retried", "err", err)
	}
}

// loadRevocations reads Config.RevocationFile, if it exists, applies its
// revocations locally and queues them for the farm.
func (n *Node) loadRevocations() error {
	path := n.cfg.RevocationFile
	if path == "" {
		return nil
	}
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	// No bound on the time it was sealed: the file is this node's own,
	// and a clock stepped back since must not make it unreadable.
	_, body, err := n.keys.openLocal(raw, n.cfg.Farm, valTombstone, []byte(revocationFileContext), n.cfg.Now())
	if err != nil {
		return errors.New("farm: the pending revocations file does not open under the farm's secrets: " + err.Error())
	}
	entries, err := decodeRevocationFile(body)
	if err != nil {
		return errors.New("farm: the pending revocations file is malformed: " + err.Error())
	}
	now := n.cfg.Now()
	for _, e := range entries {
		if e.rev.until.After(now) {
			n.cfg.Cache.RemoveChain(e.rev.chain, e.rev.until, session.OriginPeer)
		}
	}
	// Queued under one lock and written back once: written once per
	// entry, a file of N revocations cost N rewrites of up to its whole
	// size (20000: 150 s before Join returned).
	r := &n.revs
	r.mu.Lock()
	for _, e := range entries {
		rev := e.rev
		if !rev.until.After(now) {
			continue
		}
		if len(e.ids) == 0 {
			n.addRevocationLocked(session.ID{}, rev)
		}
		for _, id := range e.ids {
			n.addRevocationLocked(id, rev)
		}
	}
	n.persistLocked()
	r.mu.Unlock()
	r.signal()
	return nil
}

// A revocationEntry is one revocation in Config.RevocationFile's body,
// with the IDs of its chain's stored sessions.
type revocationEntry struct {
	rev revocation
	ids []session.ID
}

// revocationEntryLen is the length of an entry before its IDs: chain (8),
// until (8, Unix ns), the number of IDs (2).
const revocationEntryLen = 8 + 8 + 2

// appendRevocationFile appends one entry of Config.RevocationFile's body:
// chain, until, the number of IDs and the IDs (at most 65535 of them).
func appendRevocationFile(b []byte, rev revocation, ids []session.ID) []byte {
	ids = ids[:min(len(ids), 1<<16-1)]
	b = binary.BigEndian.AppendUint64(b, rev.chain)
	b = binary.BigEndian.AppendUint64(b, uint64(rev.until.UnixNano()))
	b = binary.BigEndian.AppendUint16(b, uint16(len(ids)))
	for _, id := range ids {
		b = append(b, id[:]...)
	}
	return b
}

// decodeRevocationFile decodes Config.RevocationFile's body, all of it or
// nothing: an entry cut short, or bytes after the last whole entry, are an
// error.
func decodeRevocationFile(body []byte) ([]revocationEntry, error) {
	var out []revocationEntry
	for len(body) > 0 {
		if len(body) < revocationEntryLen {
			return nil, fmt.Errorf("truncated entry (%d bytes left)", len(body))
		}
		e := revocationEntry{rev: revocation{chain: binary.BigEndian.Uint64(body), until: time.Unix(0, int64(binary.BigEndian.Uint64(body[8:])))}}
		k := int(binary.BigEndian.Uint16(body[16:]))
		body = body[revocationEntryLen:]
		if len(body) < k*session.IDLen {
			return nil, fmt.Errorf("truncated entry: %d session IDs announced, room for %d", k, len(body)/session.IDLen)
		}
		if k > 0 {
			e.ids = make([]session.ID, k)
			for i := range e.ids {
				e.ids[i] = session.ID(body[:session.IDLen])
				body = body[session.IDLen:]
			}
		}
		out = append(out, e)
	}
	return out, nil
}

// backlog holds new sessions whose store write (or, without a store,
// publish) failed, for when the transport returns: bounded, keeping the
// newest, handed back newest first.
type backlog struct {
	mu      sync.Mutex
	items   []item // ring
	head, n int
	dropped uint64
}

func newBacklog(size int) *backlog { return &backlog{items: make([]item, size)} }

func (b *backlog) push(it item) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.n == len(b.items) {
		b.items[b.head] = item{}
		b.head = (b.head + 1) % len(b.items)
		b.n--
		b.dropped++
	}
	b.items[(b.head+b.n)%len(b.items)] = it
	b.n++
}

// popNewest moves up to max unexpired items, newest first, into buf.
func (b *backlog) popNewest(buf []item, max int, now time.Time) []item {
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.n > 0 && len(buf) < max {
		i := (b.head + b.n - 1) % len(b.items)
		it := b.items[i]
		b.items[i] = item{}
		b.n--
		if it.rec.Expires.After(now) {
			buf = append(buf, it)
		}
	}
	return buf
}

func (b *backlog) stats() (int, uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.n, b.dropped
}

func (b *backlog) len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.n
}

// laterLife holds the retirements and grace cuts of batches whose store
// write or publish failed, for when the transport returns (see
// keepLifecycle): one per path (Node.lifeq for flush, Node.lifesq for
// flushStore). An item matters only until its expires — by then the
// session's record has left the store, and peers' copies their caches — and
// is dropped silently after that. It holds at most size items, one per
// session: a retirement replaces a cut of the same session (it deletes
// the record the cut would rewrite), and of two cuts the earlier end wins.
// When full, the items that expire soonest go first, counted.
//
// Items popped for a write stay in out until the write's outcome is known
// (settle), so that what the node persists (see saveLife) never misses an
// item in flight; notify, if set, is called after each change.
type laterLife struct {
	mu      sync.Mutex
	size    int
	m       map[session.ID]item
	out     []item
	dropped uint64
	notify  func()
}

func newLaterLife(size int) *laterLife {
	return &laterLife{size: size, m: make(map[session.ID]item)}
}

// push keeps the unexpired items of its, making room, if it must, by
// dropping the items that expire soonest.
func (l *laterLife) push(its []item, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.notify != nil {
		defer l.notify()
	}
	l.pushLocked(its, now)
}

func (l *laterLife) pushLocked(its []item, now time.Time) {
	for _, it := range its {
		if !it.expires.After(now) {
			continue
		}
		if old, ok := l.m[it.id]; ok {
			switch {
			case old.op == opRetire:
				continue
			case it.op == opCut && !it.until.Before(old.until):
				continue
			}
			if it.rec.Expires.IsZero() {
				it.rec = old.rec // a cut's carried record
			}
			l.m[it.id] = it
			continue
		}
		if len(l.m) >= l.size {
			l.makeRoomLocked(now)
		}
		l.m[it.id] = it
	}
}

// makeRoomLocked drops the expired items and, if that freed too little, the
// quarter of the items that expire soonest.
func (l *laterLife) makeRoomLocked(now time.Time) {
	for id, it := range l.m {
		if !it.expires.After(now) {
			delete(l.m, id)
		}
	}
	if len(l.m) < l.size {
		return
	}
	all := make([]item, 0, len(l.m))
	for _, it := range l.m {
		all = append(all, it)
	}
	slices.SortFunc(all, func(a, b item) int { return a.expires.Compare(b.expires) })
	for _, it := range all[:max(len(all)/4, len(all)-l.size+1)] {
		delete(l.m, it.id)
		l.dropped++
	}
}

// pop moves up to max unexpired items into buf.
func (l *laterLife) pop(buf []item, max int, now time.Time) []item {
	l.mu.Lock()
	defer l.mu.Unlock()
	for id, it := range l.m {
		if len(buf) >= max {
			break
		}
		delete(l.m, id)
		if it.expires.After(now) {
			buf = append(buf, it)
			l.out = append(l.out, it)
		}
	}
	return buf
}

// settle ends the write of the items pop handed out: if it failed, they
// are kept again (as keepLifecycle does when the node is not closing: then
// this changes nothing).
func (l *laterLife) settle(ok bool, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.out) == 0 {
		return
	}
	if !ok {
		l.pushLocked(l.out, now)
	}
	clear(l.out)
	l.out = l.out[:0]
	if l.notify != nil {
		l.notify()
	}
}

// snapshot returns the items kept and those in flight.
func (l *laterLife) snapshot() []item {
	l.mu.Lock()
	defer l.mu.Unlock()
	all := make([]item, 0, len(l.m)+len(l.out))
	for _, it := range l.m {
		all = append(all, it)
	}
	return append(all, l.out...)
}

// get returns the unexpired item kept for id.
func (l *laterLife) get(id session.ID, now time.Time) (item, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	it, ok := l.m[id]
	if ok && !it.expires.After(now) {
		delete(l.m, id)
		return item{}, false
	}
	return it, ok
}

func (l *laterLife) stats() (int, uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m), l.dropped
}

func (l *laterLife) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}
