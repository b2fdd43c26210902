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

// Per-sender delivery marks. A bus's own mark (transport.DeliveryMarker)
// is a round trip to the server the subscription is on: it orders what
// that server holds, not what another server of a cluster (NATS routes,
// Redis's cluster bus) has yet to pass on to it. A node whose server's
// route from a peer's server lags or is frozen would count its delivery
// current while a peer's revocation is still in the route.
//
// So each node also marks its delivery of every peer's messages, by a
// request and an answer on the bus, with no clock but its own: every
// PeerMarkInterval it publishes a msgMark carrying its clock reading t0
// (a request), and, in the same message, the newest t0 it heard from each
// peer since its previous msgMark (the answers). A peer's answer to this
// node's t0 is published on the peer's bus connection, the one its
// sessions and revocations go out on, after the peer heard the request,
// so after t0; the bus delivers one publisher's messages in order (NATS:
// per connection, through every route), so when the answer arrives every
// message the peer's server took from it before t0 has been delivered
// here. The node's mark of the farm (markedThrough) is the oldest of the
// bus's own mark and the newest t0 each live peer answered.
//
// A peer is live from its first msgMark heard until it announces its
// leaving (a last msgMark, flagged, at Close, after everything else it
// published) or until nothing was heard from it for peerMarkForget: a
// peer that cannot be heard is the case the mark is for, so its mark stays
// where its last answer left it (the hit gate asks the store meanwhile),
// and only a peer silent that long counts as gone. Forgetting it is
// settled as a gap in the node's delivery (openGap): the hit gate stays
// on until the healer has read the store's revocations, those the
// forgotten peer published while it was not heard included. A peer first
// heard has answered nothing yet: the mark is zero until it has (an
// interval and a round trip). A peer never heard (one that joined while
// its route to this node was already down, or a node of an earlier
// release, which sends no msgMark) is not waited for.
const (
	// defaultPeerMarkInterval is the most PeerMarkInterval defaults to:
	// the cadence of the buses' own marks.
	defaultPeerMarkInterval = 100 * time.Millisecond
	// minPeerMarkInterval is the least it defaults to.
	minPeerMarkInterval = 10 * time.Millisecond

	// peerMarkForget is how long a peer may go unheard before it counts
	// as gone (at least; see forgetSilent).
	peerMarkForget = 2 * time.Minute

	// maxMarkPeers bounds the peers a node tracks, and the answers one
	// msgMark carries.
	maxMarkPeers = 1024

	// markLeaving flags a sender's last msgMark (Close).
	markLeaving = 1

	markFixedLen  = 1 + 8 + 2
	markAnswerLen = 8 + 8
)

// A markBody is the body of a msgMark: flags (1) | t0 (8) | n (2) | n
// answers (requester's instance ID 8 | its t0 8). t0 is opaque to every
// node but the one that sent it (nanoseconds since its own start, plus
// one: never zero).
type markBody struct {
	flags   byte
	t0      uint64
	answers []markAnswer
}

type markAnswer struct {
	to uint64 // the requester's instance ID
	t0 uint64 // its t0
}

func appendMark(b []byte, m markBody) []byte {
	b = append(b, m.flags)
	b = binary.BigEndian.AppendUint64(b, m.t0)
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.answers)))
	for _, a := range m.answers {
		b = binary.BigEndian.AppendUint64(b, a.to)
		b = binary.BigEndian.AppendUint64(b, a.t0)
	}
	return b
}

var errMarkBody = errors.New("mark body malformed")

// parseMark decodes a msgMark body. The answers stay in body: visit
// yields each (answerAt).
func parseMark(body []byte) (flags byte, t0 uint64, answers []byte, err error) {
	if len(body) < markFixedLen {
		return 0, 0, nil, errMarkBody
	}
	n := int(binary.BigEndian.Uint16(body[9:]))
	answers = body[markFixedLen:]
	if n > maxMarkPeers || len(answers) != n*markAnswerLen {
		return 0, 0, nil, errMarkBody
	}
	return body[0], binary.BigEndian.Uint64(body[1:]), answers, nil
}

// peerMarks is the node's part of the per-sender marks.
type peerMarks struct {
	on       bool
	interval time.Duration
	base     time.Time // the node's clock origin for its t0s (monotonic)

	// floor is the oldest of the newest t0s the live peers answered
	// (nanoseconds since base, plus one), 0 if a live peer answered none,
	// noPeers if there is none.
	floor atomic.Int64

	mu    sync.Mutex
	peers map[uint64]*peerMark
	asked map[uint64]uint64 // requests heard since the last msgMark: requester → its newest t0

	sent, received, forgotten atomic.Uint64
}

const noPeers = -1

// A peerMark is what the node knows of one live peer's answers.
type peerMark struct {
	through int64     // the newest of this node's t0s it answered, 0 for none
	heard   time.Time // its last msgMark (time.Now)
}

// init sets the marks up for a node whose bus marks its delivery: on
// with a positive interval.
func (p *peerMarks) init(interval time.Duration) {
	p.on = interval > 0
	p.interval = interval
	p.base = time.Now()
	p.floor.Store(noPeers)
	p.peers = make(map[uint64]*peerMark)
	p.asked = make(map[uint64]uint64)
}

// now returns the node's t0 for a request sent now.
func (p *peerMarks) now() uint64 { return uint64(time.Since(p.base)) + 1 }

// peerMarkInterval returns the interval of the node's msgMarks for cfg:
// PeerMarkInterval, or by default a fifth of MaxDeliveryLag, between
// minPeerMarkInterval and defaultPeerMarkInterval, so that a mark taken
// over a round trip through a peer's next msgMark stays well within the
// bound while delivery keeps up.
func peerMarkInterval(cfg *Config) time.Duration {
	if cfg.PeerMarkInterval != 0 {
		return cfg.PeerMarkInterval
	}
	return min(max(cfg.MaxDeliveryLag/5, minPeerMarkInterval), defaultPeerMarkInterval)
}

// markedThrough returns the node's delivery mark of the whole farm: the
// bus's own mark (dm's), held back to the oldest t0 a live peer has
// answered (see peerMarks). The zero Time if either is zero.
func (n *Node) markedThrough(dm transport.DeliveryMarker) time.Time {
	t := dm.DeliveredThrough()
	if t.IsZero() || !n.pm.on {
		return t
	}
	switch f := n.pm.floor.Load(); f {
	case noPeers:
		return t
	case 0:
		return time.Time{}
	default:
		if p := n.pm.base.Add(time.Duration(f - 1)); p.Before(t) {
			return p
		}
		return t
	}
}

// refloor recomputes floor. p.mu is held.
func (p *peerMarks) refloor() {
	f := int64(noPeers)
	for _, e := range p.peers {
		if f == noPeers || e.through < f {
			f = e.through
		}
	}
	p.floor.Store(f)
}

// receiveMark handles a peer's msgMark, sealed by h.
func (n *Node) receiveMark(h header, body []byte) {
	flags, t0, answers, err := parseMark(body)
	if err != nil {
		n.ctr.rejected[rejectBody].Add(1)
		return
	}
	p := &n.pm
	p.received.Add(1)
	var mine int64
	for len(answers) > 0 {
		if binary.BigEndian.Uint64(answers) == n.instance {
			mine = max(mine, int64(binary.BigEndian.Uint64(answers[8:])))
		}
		answers = answers[markAnswerLen:]
	}
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.peers[h.sender]
	if flags&markLeaving != 0 {
		// Its last message: everything it published is here.
		delete(p.asked, h.sender)
		if e != nil {
			delete(p.peers, h.sender)
			p.refloor()
		}
		return
	}
	if e == nil {
		if len(p.peers) >= maxMarkPeers {
			return // not tracked: not waited for, not answered
		}
		e = &peerMark{}
		p.peers[h.sender] = e
		defer p.refloor()
	}
	e.heard = now
	if t0 > p.asked[h.sender] {
		p.asked[h.sender] = t0
	}
	// A t0 is never past this node's clock: one that is was not this
	// process's (forged, it would not open; but be safe).
	if mine > e.through && mine <= int64(p.now()) {
		old := e.through
		e.through = mine
		if f := p.floor.Load(); f == old || f == noPeers {
			p.refloor()
		}
	}
}

// nextMark returns the body of the node's next msgMark: a request now,
// and the answers to the requests heard since the previous one.
func (p *peerMarks) nextMark(flags byte) []byte {
	p.mu.Lock()
	m := markBody{flags: flags, t0: p.now(), answers: make([]markAnswer, 0, len(p.asked))}
	for id, t0 := range p.asked {
		m.answers = append(m.answers, markAnswer{to: id, t0: t0})
		delete(p.asked, id)
	}
	p.mu.Unlock()
	return appendMark(make([]byte, 0, markFixedLen+markAnswerLen*len(m.answers)), m)
}

// sendMark publishes a msgMark, waiting at most a quarter of OpTimeout (as
// sendTally). One goroutine at a time sends them (marker, then Close).
func (n *Node) sendMark(ctx context.Context, flags byte) {
	hdr := header{typ: msgMark, time: n.cfg.Now(), sender: n.instance, farm: n.cfg.Farm}
	msg := n.keys.seal(nil, hdr, n.pm.nextMark(flags), nil)
	pctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout/4)
	defer cancel()
	if err := n.publish(pctx, msg); err == nil {
		n.pm.sent.Add(1)
	}
}

// forgetSilent forgets the peers not heard from since before, and reports
// whether it forgot any.
func (p *peerMarks) forgetSilent(before time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	forgot := false
	for id, e := range p.peers {
		if e.heard.Before(before) {
			delete(p.peers, id)
			delete(p.asked, id)
			forgot = true
			p.forgotten.Add(1)
		}
	}
	if forgot {
		p.refloor()
	}
	return forgot
}

// marker publishes a msgMark every PeerMarkInterval, and forgets the
// peers silent past peerMarkForget, until ctx is done. A peer forgotten
// so is settled as a gap (see peerMarks).
func (n *Node) marker(ctx context.Context) {
	defer n.wg.Done()
	t := time.NewTicker(n.pm.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if n.pm.forgetSilent(time.Now().Add(-peerMarkForget)) && n.hitMarker != nil {
			n.openGap()
			n.wakeHealer()
		}
		n.sendMark(ctx, 0)
	}
}
