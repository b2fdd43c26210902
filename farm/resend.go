package farm

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// resendEvery bounds how often a node asks its peers to re-send what they
// hold (msgResend), and how often it re-sends what it holds itself: a
// request or a re-send wanted sooner waits for the rest of the interval,
// and the wants that arrive meanwhile are served by that one.
const resendEvery = time.Second

// resendState is the node's part of the re-send protocol: pub/sub keeps
// nothing, so a peer that was not subscribed when this node wrote and
// published its kept retirements and grace cuts (see restoreLife,
// keepLifecycle) missed them, and one about to write its sessions back to
// a store that lost its data (writeBack) would write over them. Such a
// peer asks (msgResend); every node then writes and publishes again the
// retirements and cuts it holds (Node.held) and those it made and sent
// (Node.sent: a peer may have missed them too), through the lifecycle
// backlogs. writeBack asks before it reads its cache, waits for the
// answers, and asks again once it has written.
//
// A request either asks for everything a peer keeps (an empty body: the
// write-back's, and a gap's without a store or whose reconcile could not
// vouch for the cache) or only for what a peer holds (resendHeldOnly: a
// gap's, at once, where a store holds the rest; see settleGap). A node
// older than the scope takes either for everything.
type resendState struct {
	ask  chan struct{} // has a value while a request is wanted
	send chan struct{} // has a value while a re-send is wanted
	// askAll and sendAll: the request, or the re-send, wanted covers
	// everything (Node.sent too), not only Node.held.
	askAll, sendAll atomic.Bool
	// heldSince is the earliest time, in Unix nanoseconds, from which the
	// requests for what this node holds that the next re-send serves
	// want the retirements and cuts whose store writes were settled
	// (see unsettled); 0 if none.
	heldSince atomic.Int64

	asksSent, asksFailed, asksReceived, resent atomic.Uint64
}

// resendHeldOnly is the body of a request for what the peers hold
// (Node.held) and not what they made and sent (Node.sent).
const resendHeldOnly = 1

// wantResendAsk asks resender for a request to the peers for everything
// they keep.
func (n *Node) wantResendAsk() {
	n.rs.askAll.Store(true)
	poke(n.rs.ask)
}

// wantHeldAsk asks resender for a request to the peers for what they hold
// (Node.held): what may not have reached the store.
func (n *Node) wantHeldAsk() { poke(n.rs.ask) }

// wantResend asks resender to re-send everything this node keeps.
func (n *Node) wantResend() {
	n.rs.sendAll.Store(true)
	poke(n.rs.send)
}

// poke puts a value in c, a channel of one, unless it has one.
func poke(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// receiveResend handles a peer's msgResend, whose body is its scope. A
// request for what this node holds also covers the retirements and cuts
// made here whose store write may have been settled after the peer began
// to reconcile with the store (see unsettled): the peer's reconcile may
// begin up to resendEvery before its request goes out (the resender's
// rate limit), and the request takes a while on the bus: so those not
// settled 2*resendEvery before the request came, by this node's clock.
func (n *Node) receiveResend(body []byte) {
	n.rs.asksReceived.Add(1)
	if len(body) == 1 && body[0] == resendHeldOnly {
		since := n.cfg.Now().Add(-2 * resendEvery).UnixNano()
		for {
			cur := n.rs.heldSince.Load()
			if cur != 0 && cur <= since || n.rs.heldSince.CompareAndSwap(cur, since) {
				break
			}
		}
		poke(n.rs.send)
		return
	}
	n.wantResend()
}

// resender serves wants from c with do, at most once every resendEvery,
// until ctx is done.
func (n *Node) resender(ctx context.Context, c <-chan struct{}, do func(context.Context)) {
	defer n.wg.Done()
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-c:
		}
		if wait := resendEvery - time.Since(last); !last.IsZero() && wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		last = time.Now()
		do(ctx)
	}
}

// askResend publishes a msgResend, for everything the peers keep (an
// empty body) or, unless all, for what they hold (resendHeldOnly), and
// reports whether it went out. A request that fails is not retried: the
// bus is failing, and the subscription coming back asks again (busUp).
// resender calls it for wantResendAsk and wantHeldAsk; writeBack calls it
// directly, for everything, ahead of the rate limit, since it waits for
// the answers.
func (n *Node) askResend(ctx context.Context, all bool) bool {
	hdr := header{typ: msgResend, time: n.cfg.Now(), sender: n.instance, farm: n.cfg.Farm}
	var body []byte
	if !all {
		body = []byte{resendHeldOnly}
	}
	pctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
	defer cancel()
	if err := n.publish(pctx, n.keys.seal(nil, hdr, body, nil)); err != nil {
		n.rs.asksFailed.Add(1)
		return false
	}
	n.rs.asksSent.Add(1)
	return true
}

// resendHeld queues again every unexpired retirement and grace cut the
// node holds (Node.held), and, with all, those it made and sent
// (Node.sent, see keepSent), or, for a request for what it holds, those
// of them whose store write was not settled when the peer began to
// reconcile (see receiveResend), for the paths that write and publish them, as
// restoreLife does with those read back from the lifecycle file: the
// store part deletes a retired session's record and deletes or cuts a cut
// one's, the bus part publishes both as cut messages (a cut too in
// broadcast mode: the child that would tell peers is not sent again). It
// fills each backlog at most to its bound, never dropping what is kept
// there for it; the rest waits for the next request. It never logs an ID.
func (n *Node) resendHeld(_ context.Context, all bool) {
	now := n.cfg.Now()
	var held []item
	if n.held != nil && n.heldAny.Load() {
		held = n.held.snapshot()
	}
	var sent []sentItem
	since := n.rs.heldSince.Swap(0)
	switch {
	case n.sent != nil && all:
		sent = n.sent.live(now)
	case n.sent != nil && since != 0:
		sent = n.unsettled(time.Unix(0, since), now)
	}
	if len(held)+len(sent) == 0 {
		return
	}
	// Sized once: an item is large, and a full ring is QueueSize of them
	// (growing the slice took half of a re-send's CPU: BenchmarkResend).
	toQ := make([]item, 0, len(held)+len(sent))
	seen := make(map[session.ID]int, len(held)+len(sent))
	add := func(id session.ID, op itemOp, until, expires time.Time) {
		if !expires.After(now) || op != opRetire && op != opCut {
			return
		}
		it := item{id: id, op: op, until: until, expires: expires, restored: op == opCut}
		if i, ok := seen[id]; ok {
			// Kept both as held and as sent: a retirement wins over
			// a cut, and of two cuts the earlier end.
			if old := toQ[i]; old.op == opRetire || it.op == opCut && !it.until.Before(old.until) {
				return
			}
			toQ[i] = it
			return
		}
		seen[id] = len(toQ)
		toQ = append(toQ, it)
	}
	for _, h := range held {
		add(h.id, h.op, h.until, h.expires)
	}
	for _, s := range sent {
		var until time.Time
		if s.op == opCut {
			until = time.Unix(0, s.until)
		}
		add(s.id, s.op, until, time.Unix(0, s.expires))
	}
	var toSQ []item
	if n.sq != nil && n.cfg.Records != nil {
		toSQ = slices.Clone(toQ) // room trims in place
	}
	toQ = n.lifeq.room(toQ)
	if n.sq != nil {
		toSQ = n.lifesq.room(toSQ)
	} else {
		toSQ = nil
	}
	if len(toQ) == 0 && len(toSQ) == 0 {
		return
	}
	n.rs.resent.Add(uint64(max(len(toQ), len(toSQ))))
	if len(toQ) > 0 {
		n.lifeq.push(toQ, now)
		n.q.wake()
	}
	if len(toSQ) > 0 {
		n.lifesq.push(toSQ, now)
		n.sq.wake()
	}
}

// room returns the first items of its that fit in l without dropping
// anything it keeps (an item of a session it keeps already takes no
// room).
func (l *laterLife) room(its []item) []item {
	l.mu.Lock()
	defer l.mu.Unlock()
	free := l.size - len(l.m)
	out := its[:0]
	for _, it := range its {
		if _, ok := l.m[it.id]; !ok {
			if free <= 0 {
				continue
			}
			free--
		}
		out = append(out, it)
	}
	return out
}

// keepSent keeps it, a retirement or a grace cut made here, for resendHeld
// until the session's record would have left the store and peers' copies
// their caches anyway (lifeExpiry), whether or not it reached the farm:
// a peer cut off while it was published missed it, and if the store then
// lost its data (so that the peer's reconcile has nothing to check its
// cache against), that peer would write the session back whole unless a
// re-send reached it first (see writeBack) — a consumed single-use session
// resumed again, a retired or cut one at its full life. Node.sent keeps
// the last QueueSize of them (see sentRing), across a restart too with
// Config.RevocationFile, a crash included: it asks lifeSaver, without
// waiting, to put them on disk, which it does within about lifeSaveEvery
// (see syncSent). It is not consulted on the receive or load paths: there
// this node's own retirements are refused by Node.retired and its cuts
// applied by its cache (Node.held is what may not have reached the farm:
// see heldLife).
//
// It returns the item's count among those sent ever kept (0 without it),
// by which the store's path says how far its writes are settled (see
// settleStore).
func (n *Node) keepSent(it item) uint64 {
	if n.sent == nil {
		return 0
	}
	seq := n.sent.push(it.id, it.op, it.until, n.lifeExpiry(it.id))
	if n.lf.sentDirty != nil {
		n.sentChanged()
	}
	return seq
}

// settleMarks records how far the store writes of the retirements and
// cuts made here are settled — written, or kept in held after they failed
// (see keepLifecycle) — and when: the last settleMarkCount marks, each
// the count in Node.sent of the newest item settled (see item.sent), with
// when it was.
type settleMarks struct {
	mu    sync.Mutex
	marks [settleMarkCount]settleMark
	next  int    // the slot written next
	added uint64 // marks ever added
}

type settleMark struct {
	seq uint64
	at  int64 // Unix nanoseconds
}

// settleMarkCount is how many settle marks a node keeps: one a store
// batch with a retirement or a cut, so some 64 batches, more than a
// second's worth on a busy node, when the marks it needs are those of
// about the last second or two (see settledBefore).
const settleMarkCount = 64

// settleStore notes that the store writes of batch are settled, at now.
// The store's queue is written in order, so every retirement and cut made
// here before the newest of batch is settled too (or was never queued).
func (n *Node) settleStore(batch []item, now time.Time) {
	var top uint64
	for i := range batch {
		top = max(top, batch[i].sent)
	}
	if top > 0 {
		n.settled.mark(top, now)
	}
}

// mark notes that the items of Node.sent up to the count seq are settled,
// at at (zero: long ago, as for the items read back at a restart).
func (s *settleMarks) mark(seq uint64, at time.Time) {
	var t int64
	if !at.IsZero() {
		t = at.UnixNano()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.added > 0 && s.marks[(s.next+settleMarkCount-1)%settleMarkCount].seq >= seq {
		return
	}
	s.marks[s.next] = settleMark{seq: seq, at: t}
	s.next = (s.next + 1) % settleMarkCount
	s.added++
}

// settledBefore returns the count in Node.sent of the newest item whose
// store write was settled before t; ok is false if the marks kept do not
// reach back that far.
func (s *settleMarks) settledBefore(t time.Time) (seq uint64, ok bool) {
	at := t.UnixNano()
	s.mu.Lock()
	defer s.mu.Unlock()
	kept := min(s.added, settleMarkCount)
	for i := range kept {
		m := s.marks[(s.next+settleMarkCount-1-int(i))%settleMarkCount]
		if m.at < at {
			return m.seq, true
		}
	}
	return 0, kept == s.added // none before t: only if none was ever dropped
}

// unsettled returns the retirements and cuts made here whose store write
// was not settled before since: queued for the store, on their way there,
// or written after since. A peer that settles a gap in its bus reads the
// store to reconcile its cache, from about when it asks for what this
// node holds (resendHeldOnly): what it did not find there yet is part of
// what this node holds. Where the marks do not reach back to since (more
// than settleMarkCount store batches since), all that Node.sent keeps.
func (n *Node) unsettled(since, now time.Time) []sentItem {
	if n.sent == nil || n.cfg.Records == nil {
		return nil
	}
	seq, ok := n.settled.settledBefore(since)
	if !ok {
		return n.sent.live(now)
	}
	its, _, ok := n.sent.since(seq)
	if !ok {
		return n.sent.live(now)
	}
	return its
}

// sentRing keeps the last size retirements and grace cuts a node made
// (Node.sent), for resendHeld: a ring, so that keeping one, on the path of
// the resumption or the retirement that made it, costs a copy under a
// lock and never a search or a sort. The oldest go first when it is full:
// lifeExpiry is the ID's issue time plus the cache's Lifetime, so they are
// close to the ones that expire soonest. A session may be in it more than
// once (cut, then retired); resendHeld keeps one item per session.
//
// size is QueueSize: a peer's write-back writes at most QueueSize
// sessions, and one re-send queues at most what the lifecycle backlogs
// hold (QueueSize each); older items would only wait for the next request.
type sentRing struct {
	mu     sync.Mutex
	size   int
	buf    []sentItem
	next   int    // the slot written next, once buf is full
	pushed uint64 // items ever added (see since)
}

// A sentItem is what sentRing keeps of an item.
type sentItem struct {
	id             session.ID
	op             itemOp
	until, expires int64 // Unix nanoseconds
}

func newSentRing(size int) *sentRing {
	return &sentRing{size: max(size, 1)}
}

// push keeps a retirement (op opRetire) or a cut to until of id, until
// expires, over the oldest item if the ring is full, and returns the count
// of items ever added (this one's).
func (r *sentRing) push(id session.ID, op itemOp, until, expires time.Time) uint64 {
	it := sentItem{id: id, op: op, expires: expires.UnixNano()}
	if op == opCut {
		it.until = until.UnixNano()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.add(it)
	return r.pushed
}

// add keeps it over the oldest item if the ring is full. r.mu is held.
func (r *sentRing) add(it sentItem) {
	r.pushed++
	if len(r.buf) < r.size {
		r.buf = append(r.buf, it)
	} else {
		r.buf[r.next] = it
		r.next = (r.next + 1) % r.size
	}
}

// live returns the items that expire after now as the ring keeps them,
// oldest first (for resendHeld and the sent file).
func (r *sentRing) live(now time.Time) []sentItem {
	its, _ := r.liveAt(now)
	return its
}

// liveAt is live, with the count of items ever added that it reflects.
func (r *sentRing) liveAt(now time.Time) ([]sentItem, uint64) {
	nowNano := now.UnixNano()
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]sentItem, 0, len(r.buf))
	for i := range r.buf {
		s := r.buf[(r.next+i)%len(r.buf)]
		if s.expires > nowNano {
			out = append(out, s)
		}
	}
	return out, r.pushed
}

// since returns the items added after the first seq ever added, oldest
// first, with the count of items ever added; ok is false if some of them
// were overwritten since (more than size were added).
func (r *sentRing) since(seq uint64) (its []sentItem, at uint64, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := r.pushed - seq
	if seq > r.pushed || k > uint64(len(r.buf)) {
		return nil, r.pushed, false
	}
	its = make([]sentItem, 0, k)
	// The newest item is the one before next (the last of buf while
	// it fills).
	end := len(r.buf)
	if len(r.buf) == r.size {
		end = r.next + len(r.buf)
	}
	for i := end - int(k); i < end; i++ {
		its = append(its, r.buf[i%len(r.buf)])
	}
	return its, r.pushed, true
}

// count returns how many items were ever added.
func (r *sentRing) count() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pushed
}

// restore pushes the items of its that expire after now, in order (oldest
// first), as Join reads them back from the sent file: the last size of
// them are kept.
func (r *sentRing) restore(its []sentItem, now time.Time) {
	nowNano := now.UnixNano()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, it := range its {
		if it.expires > nowNano {
			r.add(it)
		}
	}
}

// len returns how many items the ring holds, expired or not.
func (r *sentRing) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.buf)
}
