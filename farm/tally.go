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
// (a NATS slow consumer, a broker dropping within a queue): every
// Config.TallyInterval, and once more at Close, a node publishes a tally
// (msgTally) of the messages it has published so far; each receiver
// counts the authentic messages it gets from each sender and compares.
// Messages from one sender may take different connections and arrive out
// of order, so a tally is checked with a lag: when a sender's tally j
// arrives, what its tally j-2 counted as published must have arrived, and
// of that only what was published after the receiver's first tally from
// it (its baseline) and the one after (so that what crossed the baseline
// on its way is not counted twice). A receiver that finds fewer settles
// the loss as a bus gap (see settleGap).
const (
	defaultTallyInterval = time.Second

	// maxTallyPeers bounds the senders a node tracks; past it, the one
	// heard from least lately is forgotten.
	maxTallyPeers = 1024

	// tallyForgetIntervals is how many tally intervals (at least
	// tallyForgetMin) a sender may go unheard before it is forgotten.
	tallyForgetIntervals = 60
	tallyForgetMin       = 2 * time.Minute

	// tallyWarnEvery bounds how often a loss is logged.
	tallyWarnEvery = time.Minute

	tallyBodyLen = 24
)

// appendTally appends the body of a msgTally: seq (8) | started (8) |
// published (8): the tally's number (from 1, per instance), then the
// messages the sender had begun to publish, and had published (the bus
// took them), before this tally.
func appendTally(b []byte, seq, started, published uint64) []byte {
	b = binary.BigEndian.AppendUint64(b, seq)
	b = binary.BigEndian.AppendUint64(b, started)
	return binary.BigEndian.AppendUint64(b, published)
}

var errTallyBody = errors.New("tally body has a bad length")

// parseTally decodes a msgTally body.
func parseTally(body []byte) (seq, started, published uint64, err error) {
	if len(body) != tallyBodyLen {
		return 0, 0, 0, errTallyBody
	}
	return binary.BigEndian.Uint64(body), binary.BigEndian.Uint64(body[8:]), binary.BigEndian.Uint64(body[16:]), nil
}

// tallyState is the node's part of the tallies: what it published, and
// what it received from each sender.
type tallyState struct {
	on        bool          // Config.TallyInterval >= 0
	started   atomic.Uint64 // messages this node began to publish
	published atomic.Uint64 // of those, the ones the bus took
	seq       atomic.Uint64 // tallies sealed

	mu    sync.Mutex
	peers map[uint64]*peerTally
	last  *peerTally // the last sender counted: most messages come in runs from one

	sent, failed, received, checked, losses, lost atomic.Uint64

	warnMu   sync.Mutex
	warned   time.Time // when a loss was last logged
	unwarned uint64    // messages found missing since, not logged yet
}

// A peerTally is what a node knows of one sender (one instance) for its
// tallies.
type peerTally struct {
	sender uint64
	heard  time.Time // its last message
	got    uint64    // authentic messages received from it

	based      bool
	baseSeq    uint64    // its first tally heard: the baseline
	baseGot    int64     // got before the baseline, less what was found missing since
	haveStart  bool      // the tally after the baseline was heard:
	baseStart  uint64    // its count of messages begun,
	baseAt     time.Time // and its time
	prev       [2]tallyMark
	verifiedAt time.Time // the time of the tally whose count was last found whole
}

// A tallyMark is one tally received: its number, its count of messages
// published, and when it was sealed (by its sender's clock).
type tallyMark struct {
	seq, published uint64
	at             time.Time
}

// publish publishes msgs on the bus, counting them for the tallies.
// Every message the node publishes goes through it or putAndPublish.
func (n *Node) publish(ctx context.Context, msgs ...[]byte) error {
	n.tly.started.Add(uint64(len(msgs)))
	err := n.cfg.Bus.Publish(ctx, msgs...)
	if err == nil {
		n.tly.published.Add(uint64(len(msgs)))
	}
	return err
}

// putAndPublish is b.PutAndPublish, counting msgs for the tallies as
// publish does.
func (n *Node) putAndPublish(ctx context.Context, b transport.Batcher, items []transport.Item, dels []string, msgs [][]byte) error {
	n.tly.started.Add(uint64(len(msgs)))
	err := b.PutAndPublish(ctx, items, dels, msgs)
	if err == nil {
		n.tly.published.Add(uint64(len(msgs)))
	}
	return err
}

// tallier publishes a tally every TallyInterval, and forgets the senders
// not heard from lately, until ctx is done.
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
		n.tly.forget(n.cfg.Now().Add(-forget))
		n.sendTally(ctx)
	}
}

// sendTally publishes a tally of what the node has published before it.
// One goroutine at a time sends tallies (tallier, then Close): each is
// published before the next is counted.
func (n *Node) sendTally(ctx context.Context) {
	t := &n.tly
	seq := t.seq.Add(1)
	// published first: whatever it counts was begun before started is read.
	published := t.published.Load()
	started := t.started.Load()
	hdr := header{typ: msgTally, time: n.cfg.Now(), sender: n.instance, farm: n.cfg.Farm}
	msg := n.keys.seal(nil, hdr, appendTally(make([]byte, 0, tallyBodyLen), seq, started, published), nil)
	pctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
	defer cancel()
	if err := n.publish(pctx, msg); err != nil {
		t.failed.Add(1)
		return
	}
	t.sent.Add(1)
}

// count counts an authentic message from sender, received at now. It is
// the receive path's share of the tallies: a lookup of the last sender,
// else of the map.
func (t *tallyState) count(sender uint64, now time.Time) {
	t.mu.Lock()
	e := t.last
	if e == nil || e.sender != sender {
		e = t.peers[sender]
		if e == nil {
			e = t.add(sender)
		}
		t.last = e
	}
	e.got++
	e.heard = now
	t.mu.Unlock()
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

// reset forgets every sender: the subscription went down or came back,
// and what it missed meanwhile is busUp's to settle. Each sender's next
// tally is a new baseline.
func (t *tallyState) reset() {
	t.mu.Lock()
	clear(t.peers)
	t.last = nil
	t.mu.Unlock()
}

// check checks sender's tally number seq, sealed at at, which counted
// started messages begun and published published before it; count has
// counted the tally itself. It returns how many of sender's messages are
// missing, if any, and the time of the tally that was last found whole
// (or, before any was, of the tally after the baseline): the lost
// messages were published after it.
//
// Messages the tally after the baseline (b+1) counted as begun may have
// arrived before the baseline (b); those begun after it are taken to
// arrive after b, those the tally before last (ref, at most seq-2) counted
// as published to have arrived before this one: of the messages received
// since b, at least ref's published count less b+1's begun count. A
// message counted as received but published before the baseline (or one
// delivered twice) may hide a loss; reordering within about a tally
// interval never makes one.
func (t *tallyState) check(sender, seq, started, published uint64, at time.Time) (lost uint64, since time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.peers[sender]
	if e == nil {
		return 0, time.Time{}
	}
	got := int64(e.got) - 1 // before this tally
	if !e.based {
		e.based, e.baseSeq, e.baseGot = true, seq, got
		e.prev[1] = tallyMark{seq: seq, published: published, at: at}
		return 0, time.Time{}
	}
	if seq <= e.prev[1].seq {
		return 0, time.Time{} // late, or replayed: counted, not checked
	}
	if !e.haveStart {
		e.haveStart, e.baseStart, e.baseAt = true, started, at
	}
	var ref tallyMark
	for _, m := range e.prev {
		if m.seq > e.baseSeq && m.seq+2 <= seq && m.seq > ref.seq {
			ref = m
		}
	}
	e.prev = [2]tallyMark{e.prev[1], {seq: seq, published: published, at: at}}
	if ref.seq == 0 {
		return 0, time.Time{}
	}
	t.checked.Add(1)
	need := int64(ref.published) - int64(e.baseStart)
	have := got - e.baseGot
	if have >= need {
		e.verifiedAt = ref.at
		return 0, time.Time{}
	}
	missing := need - have
	e.baseGot -= missing // found missing once: settled
	since = e.verifiedAt
	if since.IsZero() {
		since = e.baseAt
	}
	return uint64(missing), since
}

// receiveTally handles a peer's msgTally, sealed by h.
func (n *Node) receiveTally(h header, body []byte) {
	seq, started, published, err := parseTally(body)
	if err != nil {
		n.ctr.rejected[rejectBody].Add(1)
		return
	}
	t := &n.tly
	t.received.Add(1)
	lost, since := t.check(h.sender, seq, started, published, h.time)
	if lost == 0 {
		return
	}
	t.losses.Add(1)
	t.lost.Add(lost)
	// Sealed by the sender's clock: MaxSkew earlier by this node's.
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
