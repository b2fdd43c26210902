package farm

import (
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// Tallies detect the messages a bus loses while the subscription stays up
// (a NATS slow consumer, a broker dropping within a queue). A node cuts
// time into slots of Config.TallyInterval, by its own clock, and counts
// the messages it publishes by the slot they were sealed in (the sealing
// time is in every envelope's authenticated header). Every TallyInterval,
// and once more at Close, it publishes a tally (msgTally): the counts of
// the slots that closed by its previous tally — at least two slots old
// then, and with no publish of theirs still in flight. Each receiver
// counts the authentic messages it gets from each sender by the same
// slots, and compares. The lag (a slot reported one tally after it
// closed, so at least an interval after its last publish returned) lets
// messages that took another connection arrive first; a receiver checks
// only the slots that began at least an interval after the first tally it
// heard from the sender, and after the latest sealing time of the
// sender's messages it heard until then, so that it counted every message
// of theirs: a tally can reach the bus well after it was sealed (its
// publish waited for a core, or for a connection, on a loaded machine)
// while messages the sender sealed later went ahead of it. A
// receiver that finds fewer messages than counted settles the loss as a
// bus gap (see settleGap). Messages a sender sealed in a slot but began
// to publish after it reported the slot, or that came twice, count as
// extra: they may hide a loss in the same slot, never make one.
const (
	defaultTallyInterval = time.Second

	// tallySlots is how many slots a node keeps counts of, per sender
	// and for itself; a tally reports at most tallySlots-4 of them.
	tallySlots = 16

	// maxTallyPeers bounds the senders a node tracks; past it, the one
	// heard from least lately is forgotten.
	maxTallyPeers = 1024

	// tallyForgetIntervals is how many tally intervals (at least
	// tallyForgetMin) a sender may go unheard before it is forgotten.
	tallyForgetIntervals = 60
	tallyForgetMin       = 2 * time.Minute

	// tallyWarnEvery bounds how often a loss is logged.
	tallyWarnEvery = time.Minute

	// maxTallyWidth bounds the slot width a tally may give (µs).
	maxTallyWidth = int64(time.Hour / time.Microsecond)

	tallyFixedLen = 8 + 8 + 8 + 1
)

// A tallyBody is the body of a msgTally: seq (8) | width (8, µs) | first
// slot (8) | n (1) | n counts (8 each). seq numbers the sender's tallies
// from 1; the counts are of the messages it sealed in slots first to
// first+n-1 (slot: Unix µs / width) and published (the bus took them).
type tallyBody struct {
	seq    uint64
	width  int64
	first  int64
	counts []uint64
}

func appendTally(b []byte, t tallyBody) []byte {
	b = binary.BigEndian.AppendUint64(b, t.seq)
	b = binary.BigEndian.AppendUint64(b, uint64(t.width))
	b = binary.BigEndian.AppendUint64(b, uint64(t.first))
	b = append(b, byte(len(t.counts)))
	for _, c := range t.counts {
		b = binary.BigEndian.AppendUint64(b, c)
	}
	return b
}

var errTallyBody = errors.New("tally body malformed")

// parseTally decodes a msgTally body.
func parseTally(body []byte) (tallyBody, error) {
	var t tallyBody
	if len(body) < tallyFixedLen {
		return t, errTallyBody
	}
	t.seq = binary.BigEndian.Uint64(body)
	t.width = int64(binary.BigEndian.Uint64(body[8:]))
	t.first = int64(binary.BigEndian.Uint64(body[16:]))
	n := int(body[24])
	body = body[tallyFixedLen:]
	if t.width <= 0 || t.width > maxTallyWidth || n > tallySlots || len(body) != 8*n {
		return tallyBody{}, errTallyBody
	}
	t.counts = make([]uint64, n)
	for i := range t.counts {
		t.counts[i] = binary.BigEndian.Uint64(body[8*i:])
	}
	return t, nil
}

// slotOf returns the slot of width w (µs) that the time us (Unix µs) is in.
func slotOf(us, w int64) int64 {
	s := us / w
	if us < 0 && us%w != 0 {
		s--
	}
	return s
}

// tallyState is the node's part of the tallies: what it published, and
// what it received from each sender.
type tallyState struct {
	on    bool  // Config.TallyInterval > 0
	width int64 // Config.TallyInterval, in µs

	pubMu      sync.Mutex
	pub        [tallySlots]pubSlot // by slot mod tallySlots
	closed     []uint64            // counts of the slots closed at the last tally, from closedAt
	closedAt   int64
	lastClosed int64 // the last slot closed (reported, or to be)
	begun      bool  // a tally was sealed: lastClosed holds
	seq        uint64

	mu    sync.Mutex
	peers map[uint64]*peerTally
	last  *peerTally // the last sender counted: most messages come in runs from one

	sent, failed, received, checked, losses, lost atomic.Uint64
	failedAt                                      atomic.Int64 // when a publish last failed (Unix ns, time.Now)

	warnMu   sync.Mutex
	warned   time.Time // when a loss was last logged
	unwarned uint64    // messages found missing since, not logged yet

	// tickHook, if set, is called by tallier on each tick before it
	// does anything else (the tests hold a tick up until Close).
	tickHook atomic.Pointer[func(context.Context)]
}

// A pubSlot counts the messages this node sealed in one slot: published,
// and being published.
type pubSlot struct {
	slot      int64
	published uint64
	inFlight  int64
}

// A peerTally is what a node knows of one sender (one instance) for its
// tallies.
type peerTally struct {
	sender uint64
	heard  time.Time // its last message

	width   int64 // its slot width (µs), from its first tally; 0 until then
	minSlot int64 // the first slot checked: see check
	latest  int64 // the latest sealing time (Unix µs) of its messages heard
	lastSeq uint64
	lo, hi  int64 // the bounds (µs) of the slot of its last message,
	cur     int   // and that slot's index in got
	got     [tallySlots]recvSlot
}

// A recvSlot counts the messages received from a sender sealed in one of
// its slots.
type recvSlot struct {
	slot  int64
	count uint64
}

// sealedAt returns the sealing time of envelope msg, in Unix µs, and
// whether msg is long enough to hold one.
func sealedAt(msg []byte) (int64, bool) {
	if len(msg) < 13 {
		return 0, false
	}
	return int64(binary.BigEndian.Uint64(msg[5:])), true
}

// begin counts msgs as being published, end as published (ok) or not.
func (t *tallyState) begin(msgs [][]byte) {
	t.pubMu.Lock()
	for _, m := range msgs {
		if p := t.pubSlot(m); p != nil {
			p.inFlight++
		}
	}
	t.pubMu.Unlock()
}

func (t *tallyState) end(msgs [][]byte, ok bool) {
	t.pubMu.Lock()
	for _, m := range msgs {
		if p := t.pubSlot(m); p != nil {
			p.inFlight--
			if ok {
				p.published++
			}
		}
	}
	t.pubMu.Unlock()
}

// pubSlot returns the count of the slot msg was sealed in, or nil if it
// is older than those kept (or already reported). t.pubMu is held.
func (t *tallyState) pubSlot(msg []byte) *pubSlot {
	us, ok := sealedAt(msg)
	if !ok {
		return nil
	}
	s := slotOf(us, t.width)
	if t.begun && s <= t.lastClosed {
		return nil // reported: an extra for the receivers
	}
	p := &t.pub[uint64(s)%tallySlots]
	switch {
	case p.slot == s:
	case p.slot < s:
		*p = pubSlot{slot: s}
	default:
		return nil
	}
	return p
}

// nextTally returns the body of the tally to publish at now (Unix µs):
// the slots closed at the previous tally. Then it closes the slots at
// least two old that have no publish in flight, up to the first that has
// one, for the next tally. The first tally closes none: the slots before
// it are never reported.
func (t *tallyState) nextTally(now int64) tallyBody {
	t.pubMu.Lock()
	defer t.pubMu.Unlock()
	t.seq++
	b := tallyBody{seq: t.seq, width: t.width, first: t.closedAt, counts: t.closed}
	t.closed = nil
	cur := slotOf(now, t.width)
	if !t.begun {
		t.begun, t.lastClosed, t.closedAt = true, cur-2, cur-1
		return b
	}
	from := max(t.lastClosed+1, cur-2-(tallySlots-4)+1)
	t.closedAt = from
close:
	for s := from; s <= cur-2; s++ {
		p := &t.pub[uint64(s)%tallySlots]
		var c uint64
		switch {
		case p.slot == s && p.inFlight > 0:
			break close // the next tally closes it, and what follows
		case p.slot == s:
			c = p.published
		case p.slot > s:
			break close // reused: not within the window
		}
		t.closed = append(t.closed, c)
		t.lastClosed = s
	}
	return b
}

// publish publishes msgs on the bus, counting them for the tallies.
// Every message the node publishes goes through it or putAndPublish.
func (n *Node) publish(ctx context.Context, msgs ...[]byte) error {
	if !n.tly.on {
		return n.cfg.Bus.Publish(ctx, msgs...)
	}
	n.tly.begin(msgs)
	err := n.cfg.Bus.Publish(ctx, msgs...)
	n.tly.end(msgs, err == nil)
	if err != nil {
		n.tly.publishFailed(ctx)
	}
	return err
}

// putAndPublish is b.PutAndPublish, counting msgs for the tallies as
// publish does.
func (n *Node) putAndPublish(ctx context.Context, b transport.Batcher, items []transport.Item, dels []string, msgs [][]byte) error {
	if !n.tly.on {
		return b.PutAndPublish(ctx, items, dels, msgs)
	}
	n.tly.begin(msgs)
	err := b.PutAndPublish(ctx, items, dels, msgs)
	n.tly.end(msgs, err == nil)
	if err != nil {
		n.tly.publishFailed(ctx)
	}
	return err
}

// tallier publishes a tally every TallyInterval, and forgets the senders
// not heard from lately, until ctx is done. It skips the tallies due
// within OpTimeout of a publish that failed: through an outage a
// tally would only hang on the transport (and hold Close back), and the
// slots it would have closed are closed by the next one.
func (n *Node) tallier(ctx context.Context) {
	defer n.wg.Done()
	t := time.NewTicker(n.cfg.TallyInterval)
	defer t.Stop()
	forget := max(tallyForgetIntervals*n.cfg.TallyInterval, tallyForgetMin)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if h := n.tly.tickHook.Load(); h != nil {
			(*h)(ctx)
		}
		n.tly.forget(n.cfg.Now().Add(-forget))
		if n.tly.failedLately(n.cfg.OpTimeout) {
			continue
		}
		n.sendTally(ctx)
	}
}

// publishFailed records that a publish with ctx failed, for failedLately
// and Close, unless ctx was cancelled: only Close cancels a publish (the
// node's goroutines, the publishers past their wait), and a publish it
// cut short says nothing of the transport. Counted as a failure, such a
// publish (a tally the tallier woke for as Close began, on a loaded
// machine) kept Close from sending its last tally, as through an outage.
// A publish past its deadline is a failure.
func (t *tallyState) publishFailed(ctx context.Context) {
	if errors.Is(ctx.Err(), context.Canceled) {
		return
	}
	t.failedAt.Store(time.Now().UnixNano())
}

// failedLately reports whether a publish failed within d.
func (t *tallyState) failedLately(d time.Duration) bool {
	return t.failedSince(time.Now().Add(-d))
}

// failedSince reports whether a publish failed after since.
func (t *tallyState) failedSince(since time.Time) bool {
	f := t.failedAt.Load()
	return f != 0 && time.Unix(0, f).After(since)
}

// sendTally publishes a tally, waiting at most a quarter of OpTimeout: a tally
// that hangs on the transport would hold Close back, and one that fails
// costs nothing (the next one reports what it would have). One goroutine at a time sends
// tallies (tallier, then Close).
func (n *Node) sendTally(ctx context.Context) {
	t := &n.tly
	now := n.cfg.Now()
	body := t.nextTally(now.UnixMicro())
	hdr := header{typ: msgTally, time: now, sender: n.instance, farm: n.cfg.Farm}
	msg := n.keys.seal(nil, hdr, appendTally(make([]byte, 0, tallyFixedLen+8*len(body.counts)), body), nil)
	pctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout/4)
	defer cancel()
	if err := n.publish(pctx, msg); err != nil {
		t.failed.Add(1)
		return
	}
	t.sent.Add(1)
}

// count counts an authentic message from sender, sealed at sealed and
// received at now. It is the receive path's share of the tallies: a
// lookup of the last sender (else of the map), and, once the sender's
// slots are known, a comparison with the bounds of the last slot counted.
func (t *tallyState) count(sender uint64, sealed, now time.Time) {
	t.mu.Lock()
	e := t.last
	if e == nil || e.sender != sender {
		e = t.peers[sender]
		if e == nil {
			e = t.add(sender)
		}
		t.last = e
	}
	e.heard = now
	us := sealed.UnixMicro()
	e.latest = max(e.latest, us)
	if e.width != 0 {
		if us >= e.lo && us < e.hi {
			e.got[e.cur].count++
		} else {
			e.slot(us)
		}
	}
	t.mu.Unlock()
}

// slot counts a message sealed at us (Unix µs) in another slot than the
// last one's.
func (e *peerTally) slot(us int64) {
	s := slotOf(us, e.width)
	i := int(uint64(s) % tallySlots)
	g := &e.got[i]
	switch {
	case g.slot == s:
		g.count++
	case g.slot < s:
		*g = recvSlot{slot: s, count: 1}
	default:
		return // older than the slots kept: unchecked
	}
	e.lo, e.hi, e.cur = s*e.width, (s+1)*e.width, i
}

// add starts tracking sender, forgetting the stalest sender if the map is
// full. t.mu is held.
func (t *tallyState) add(sender uint64) *peerTally {
	if t.peers == nil {
		t.peers = make(map[uint64]*peerTally)
	}
	if len(t.peers) >= maxTallyPeers {
		var stalest *peerTally
		for _, e := range t.peers {
			if stalest == nil || e.heard.Before(stalest.heard) {
				stalest = e
			}
		}
		delete(t.peers, stalest.sender)
	}
	e := &peerTally{sender: sender}
	t.peers[sender] = e
	return e
}

// forget forgets the senders last heard from before before: nodes that
// left (a restarted node is a new instance).
func (t *tallyState) forget(before time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for s, e := range t.peers {
		if e.heard.Before(before) {
			delete(t.peers, s)
		}
	}
	if t.last != nil && t.peers[t.last.sender] != t.last {
		t.last = nil
	}
}

// reset forgets what each sender's tallies told: the subscription went
// down or came back, and what it missed meanwhile is busUp's to settle.
// Each sender's next tally is a new baseline. The latest sealing time heard
// from each is kept: the messages heard before the reset are not counted
// after it, and a baseline that reaches this node after one of them,
// though sealed earlier, must not check that message's slot.
func (t *tallyState) reset() {
	t.mu.Lock()
	for _, e := range t.peers {
		*e = peerTally{sender: e.sender, heard: e.heard, latest: e.latest}
	}
	t.mu.Unlock()
}

// check compares sender's tally tb, sealed at at (count has counted the
// tally itself), with the messages received from it. The first tally
// heard from a sender (or one with another slot width) is its baseline:
// from then on its messages are counted by slot, and the slots that begin
// an interval or more after the baseline was sealed, and after every
// message heard from the sender until then was sealed, are checked. The
// messages heard before the baseline were not counted; the sender seals
// and publishes from several goroutines, so a baseline published late
// (its publish waited for a core or a connection) can reach this node
// after messages sealed slots later, which would count as missing from
// their slots (TestTallyLateBaselineNoFalseLoss). It
// returns how many of the sender's messages are missing, if any, and the
// start of the first slot they are missing from (by the sender's clock).
// A slot reported again, or older than the slots kept, is not checked.
func (t *tallyState) check(sender uint64, tb tallyBody, at time.Time) (lost uint64, since time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.peers[sender]
	if e == nil {
		return 0, time.Time{}
	}
	if e.width != tb.width {
		*e = peerTally{sender: e.sender, heard: e.heard, latest: e.latest, width: tb.width, lastSeq: tb.seq,
			minSlot: max(slotOf(at.UnixMicro(), tb.width)+2, slotOf(e.latest, tb.width)+1)}
		return 0, time.Time{}
	}
	if tb.seq <= e.lastSeq {
		return 0, time.Time{} // late, or replayed
	}
	e.lastSeq = tb.seq
	for i, c := range tb.counts {
		s := tb.first + int64(i)
		if s < e.minSlot {
			continue
		}
		g := &e.got[uint64(s)%tallySlots]
		var have uint64
		switch {
		case g.slot == s:
			have = g.count
		case g.slot > s:
			continue // no longer kept
		}
		t.checked.Add(1)
		if have < c {
			if lost == 0 {
				since = time.UnixMicro(s * e.width)
			}
			lost += c - have
		}
	}
	return lost, since
}

// receiveTally handles a peer's msgTally, sealed by h; old if more than
// MaxAge ago. An old tally (one a bus kept through an outage) is counted,
// not checked, nor taken for a baseline: the messages of its time older
// than MaxAge that are refused would count as missing.
func (n *Node) receiveTally(h header, body []byte, old bool) {
	tb, err := parseTally(body)
	if err != nil {
		n.ctr.rejected[rejectBody].Add(1)
		return
	}
	t := &n.tly
	t.received.Add(1)
	if old {
		return
	}
	lost, since := t.check(h.sender, tb, h.time)
	if lost == 0 {
		return
	}
	t.losses.Add(1)
	t.lost.Add(lost)
	// The slot's start by the sender's clock: MaxSkew earlier by this
	// node's.
	dropped, action := n.settleGap(since.Add(-n.cfg.MaxSkew), n.storeGeneration(), gapLoss)
	t.warnMu.Lock()
	t.unwarned += lost
	now := time.Now()
	if !t.warned.IsZero() && now.Sub(t.warned) < tallyWarnEvery {
		t.warnMu.Unlock()
		return
	}
	missing := t.unwarned
	t.warned, t.unwarned = now, 0
	t.warnMu.Unlock()
	args := []any{"missing", missing, "action", action}
	if action == "dropped" {
		args = append(args, "dropped", dropped)
	}
	n.log.Warn("farm: the bus lost messages from a peer while the subscription stayed up; settled as a bus gap (logged at most once a minute)", args...)
}
