package farm

import (
	"context"
	"encoding/binary"
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// Per-server delivery marks. A bus's own mark (transport.DeliveryMarker)
// is a round trip to the server the subscription is on: it orders what
// that server holds, not what another server of a cluster (NATS, over
// its routes) has yet to pass on to it. A node whose server's route from
// a peer's server lags or is frozen would count its delivery current
// while a revocation the peer published is still in the route.
//
// So on a bus that tells which server it is on (transport.ServerTeller)
// each node also marks its delivery of what every other server took, by
// requests and answers on the bus, with no clock but its own: every
// PeerMarkInterval it publishes a msgMark carrying its clock reading t0
// (a request), the ID of the server it publishes to, and the newest t0 it
// heard from each peer since its previous msgMark (the answers). A peer
// on server S answers this node's t0 after it heard it, so S takes the
// answer after t0; S passes what it took on to this node's server in
// order (one route, FIFO), so when the answer arrives every message S took
// before t0, from any publisher, has been delivered here. The node's mark
// of the farm (markedThrough) is the oldest of the bus's own mark and, for
// each other server that a live peer is on, the newest t0 a peer on it
// answered. Peers on the node's own server are covered by the bus's own
// mark: a peer whose own path to the server is frozen holds nothing back
// (what it could not send, no server took), as with one server. A bus
// that is not a ServerTeller (Redis, RabbitMQ) sends no msgMark. On a
// single NATS server the msgMarks are sent, and nobody waits for them:
// the transport cannot tell that no other server passes messages on to
// its own (a leaf node's hub does, with no cluster name to show it).
//
// A peer is live from its first msgMark heard until it announces its
// leaving (a last msgMark, flagged, at Close, after everything else it
// published) or until nothing was heard from it for peerMarkForgetAfter: a
// server whose peers cannot be heard is the case the mark is for, so its
// mark stays where the last answer left it (the hit gate asks the store
// meanwhile), and only a peer silent that long counts as gone. Forgetting
// it is settled as a gap in the node's delivery (openGap): the hit gate
// stays on until the healer has read the store's revocations, those
// published while the peer was not heard included. A server whose peers
// are first heard has answered nothing yet: the mark is zero until one of
// them has (an interval and a round trip). A peer never heard (one that
// joined while its route to this node was already down, or a node of an
// earlier release, which sends no msgMark) is not waited for.
const (
	// defaultPeerMarkInterval is the most PeerMarkInterval defaults to:
	// the cadence of the buses' own marks.
	defaultPeerMarkInterval = 100 * time.Millisecond
	// minPeerMarkInterval is the least it defaults to.
	minPeerMarkInterval = 10 * time.Millisecond

	// peerMarkForget is how long a peer may go unheard before it counts
	// as gone (at least; see forgetSilent), or peerMarkForgetIntervals
	// of the node's PeerMarkInterval if that is longer: a peer that
	// sends a msgMark each interval (theirs alike, as a farm's nodes
	// share a configuration) is not silent between two.
	peerMarkForget          = 2 * time.Minute
	peerMarkForgetIntervals = 60

	// maxMarkPeers bounds the peers a node tracks, and the answers one
	// msgMark carries.
	maxMarkPeers = 1024

	// markLeaving flags a sender's last msgMark (Close).
	markLeaving = 1

	// maxServerID bounds the length of a server's ID in a msgMark.
	maxServerID = 255

	markFixedLen  = 1 + 8 + 1 + 2
	markAnswerLen = 8 + 8
)

// A markBody is the body of a msgMark: flags (1) | t0 (8) | server ID
// (length 1, then the ID) | n (2) | n answers (requester's instance ID 8 |
// its t0 8). t0 is opaque to every node but the one that sent it
// (nanoseconds since its own start, plus one: never zero); the server is
// the one the sender publishes to (transport.ServerTeller).
type markBody struct {
	flags   byte
	t0      uint64
	server  string
	answers []markAnswer
}

type markAnswer struct {
	to uint64 // the requester's instance ID
	t0 uint64 // its t0
}

func appendMark(b []byte, m markBody) []byte {
	b = append(b, m.flags)
	b = binary.BigEndian.AppendUint64(b, m.t0)
	b = append(b, byte(len(m.server)))
	b = append(b, m.server...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.answers)))
	for _, a := range m.answers {
		b = binary.BigEndian.AppendUint64(b, a.to)
		b = binary.BigEndian.AppendUint64(b, a.t0)
	}
	return b
}

var errMarkBody = errors.New("mark body malformed")

// parseMark decodes a msgMark body. The answers stay in body, markAnswerLen
// bytes each.
func parseMark(body []byte) (m markBody, answers []byte, err error) {
	if len(body) < markFixedLen {
		return m, nil, errMarkBody
	}
	m.flags, m.t0 = body[0], binary.BigEndian.Uint64(body[1:])
	l := int(body[9])
	if len(body) < markFixedLen+l {
		return markBody{}, nil, errMarkBody
	}
	m.server = string(body[10 : 10+l])
	n := int(binary.BigEndian.Uint16(body[10+l:]))
	answers = body[markFixedLen+l:]
	if n > maxMarkPeers || len(answers) != n*markAnswerLen {
		return markBody{}, nil, errMarkBody
	}
	return m, answers, nil
}

// peerMarks is the node's part of the per-sender marks.
type peerMarks struct {
	on       bool
	teller   transport.ServerTeller // the bus
	interval time.Duration
	base     time.Time // the node's clock origin for its t0s (monotonic)

	// floor is, over the servers other than the node's own that a live
	// peer is on, the oldest of the newest t0 a peer on each answered
	// (nanoseconds since base, plus one); 0 if the peers on one of them
	// answered none, noPeers if there is no such server.
	floor atomic.Int64

	mu    sync.Mutex
	self  string // the server the node's bus is on, as its last msgMark said
	peers map[uint64]*peerMark
	asked map[uint64]uint64 // requests heard since the last msgMark: requester → its newest t0

	sent, received, forgotten atomic.Uint64
}

const noPeers = -1

// A peerMark is what the node knows of one live peer's answers.
type peerMark struct {
	server  string    // the server its last msgMark went to
	through int64     // the newest of this node's t0s it answered on server, 0 for none
	heard   time.Time // its last msgMark (time.Now)
}

// init sets the marks up for a node whose bus marks its delivery and
// tells its server: on with a positive interval.
func (p *peerMarks) init(teller transport.ServerTeller, interval time.Duration) {
	p.on = interval > 0
	p.teller = teller
	p.interval = interval
	p.base = time.Now()
	p.floor.Store(noPeers)
	p.peers = make(map[uint64]*peerMark)
	p.asked = make(map[uint64]uint64)
}

// now returns the node's t0 for a request sent now.
func (p *peerMarks) now() uint64 { return uint64(time.Since(p.base)) + 1 }

// peerMarkInterval returns the interval of the node's msgMarks for cfg:
// PeerMarkInterval, or by default a fifth of the hit gate's bound
// (MaxDeliveryLag, or a shorter grace: see hitLag), between
// minPeerMarkInterval and defaultPeerMarkInterval, so that a mark taken
// over a round trip through a peer's next msgMark stays well within the
// bound while delivery keeps up.
func peerMarkInterval(cfg *Config) time.Duration {
	if cfg.PeerMarkInterval != 0 {
		return cfg.PeerMarkInterval
	}
	bound := cfg.MaxDeliveryLag
	if cfg.Cache != nil {
		bound = hitLag(bound, cfg.Cache.Config().ResumeGrace, cfg.FlushWindow)
	}
	return min(max(bound/5, minPeerMarkInterval), defaultPeerMarkInterval)
}

// markedThrough returns the node's delivery mark of the whole farm: the
// bus's own mark (dm's), held back to the oldest of the other servers'
// marks (see peerMarks). The zero Time if either is zero.
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
	var servers map[string]int64 // the newest t0 answered on each
	for _, e := range p.peers {
		if e.server == p.self {
			continue
		}
		if servers == nil {
			servers = make(map[string]int64)
		}
		servers[e.server] = max(servers[e.server], e.through)
	}
	f := int64(noPeers)
	for _, t := range servers {
		if f == noPeers || t < f {
			f = t
		}
	}
	p.floor.Store(f)
}

// receiveMark handles a peer's msgMark, sealed by h.
func (n *Node) receiveMark(h header, body []byte) {
	m, answers, err := parseMark(body)
	if err != nil {
		n.ctr.rejected[rejectBody].Add(1)
		return
	}
	p := &n.pm
	p.received.Add(1)
	var mine int64
	for ; len(answers) > 0; answers = answers[markAnswerLen:] {
		if binary.BigEndian.Uint64(answers) == n.instance {
			mine = max(mine, int64(binary.BigEndian.Uint64(answers[8:])))
		}
	}
	// A t0 past this node's clock was not this process's.
	if mine > int64(p.now()) {
		mine = 0
	}
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.peers[h.sender]
	if m.flags&markLeaving != 0 {
		// Its last message: everything it published is here.
		delete(p.asked, h.sender)
		if e != nil {
			delete(p.peers, h.sender)
			p.refloor()
		}
		return
	}
	changed := mine > 0 // an answer: the floor moves if its server is another
	moved := false      // a peer on a server not waited for before, or no longer
	if e == nil {
		if len(p.peers) >= maxMarkPeers {
			return // not tracked: not waited for, not answered
		}
		e = &peerMark{server: m.server}
		p.peers[h.sender] = e
		moved = true
	} else if e.server != m.server {
		// On another server now: its answers so far went through
		// the one it left.
		e.server, e.through = m.server, 0
		moved = true
	}
	e.heard = now
	if m.t0 > p.asked[h.sender] {
		p.asked[h.sender] = m.t0
	}
	e.through = max(e.through, mine)
	if moved || changed && e.server != p.self {
		p.refloor()
	}
}

// moveTo notes that the node's bus is on server, and recomputes floor if
// it was on another: the peers on the server it left are on another
// server now, those on server no longer. p.mu is held.
func (p *peerMarks) moveTo(server string) {
	if server != p.self {
		p.self = server
		p.refloor()
	}
}

// subscribed notes the server the node's bus is on as its subscription
// comes up, before it counts as up: a connection that moved to another
// server (a NATS client's reconnect) changes which peers' answers the
// node waits for at once, not from its next msgMark, an interval on, while
// its hits and carried copies would count its mark as the old server's.
func (p *peerMarks) subscribed() {
	if !p.on {
		return
	}
	server := p.teller.ConnectedServer()
	if server == "" || len(server) > maxServerID {
		return
	}
	p.mu.Lock()
	p.moveTo(server)
	p.mu.Unlock()
}

// nextMark returns the body of the node's next msgMark: a request now,
// and the answers to the requests heard since the previous one, but for
// the requesters on server, the one it goes to.
func (p *peerMarks) nextMark(flags byte, server string) []byte {
	p.mu.Lock()
	p.moveTo(server)
	m := markBody{flags: flags, t0: p.now(), server: server, answers: make([]markAnswer, 0, len(p.asked))}
	for id, t0 := range p.asked {
		delete(p.asked, id)
		// A requester on the same server waits for no answer of ours
		// (its own round trip covers the server).
		if e := p.peers[id]; e != nil && e.server == server {
			continue
		}
		m.answers = append(m.answers, markAnswer{to: id, t0: t0})
	}
	p.mu.Unlock()
	return appendMark(make([]byte, 0, markFixedLen+len(server)+markAnswerLen*len(m.answers)), m)
}

// sendMark publishes a msgMark, waiting at most a quarter of OpTimeout (as
// sendTally), unless the bus is not connected to a server. One goroutine
// at a time sends them (marker, then Close).
func (n *Node) sendMark(ctx context.Context, flags byte) {
	server := n.pm.teller.ConnectedServer()
	if server == "" || len(server) > maxServerID {
		return
	}
	hdr := header{typ: msgMark, time: n.cfg.Now(), sender: n.instance, farm: n.cfg.Farm}
	msg := n.keys.seal(nil, hdr, n.pm.nextMark(flags, server), nil)
	pctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout/4)
	defer cancel()
	if err := n.publish(pctx, msg); err == nil {
		n.pm.sent.Add(1)
	}
}

// silentElsewhere reports whether a peer not heard from since before is on
// another server than the node's: forgetting it raises floor, so the gap
// is settled first (see marker).
func (p *peerMarks) silentElsewhere(before time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range p.peers {
		if e.heard.Before(before) && e.server != p.self {
			return true
		}
	}
	return false
}

// forgetSilent forgets the peers not heard from since before, those on
// another server than the node's only if elsewhere, and reports whether
// one of them was on another server (its mark was held back to theirs).
func (p *peerMarks) forgetSilent(before time.Time, elsewhere bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	forgot, waited := false, false
	for id, e := range p.peers {
		if e.heard.Before(before) && (elsewhere || e.server == p.self) {
			delete(p.peers, id)
			delete(p.asked, id)
			forgot = true
			waited = waited || e.server != p.self
			p.forgotten.Add(1)
		}
	}
	if forgot {
		p.refloor()
	}
	return waited
}

// settleForgotten settles the forgetting of a silent peer on another
// server as a gap (see marker): carried copies issued before now are
// refused, and the hit gate stays on until a heal has read the store.
func (n *Node) settleForgotten() {
	n.restartReach()
	if n.hitMarker != nil {
		n.openGap()
	}
}

// marker publishes a msgMark every PeerMarkInterval, and forgets the
// peers silent past peerMarkForgetAfter, until ctx is done. A peer on another
// server forgotten so is settled as a gap (see peerMarks): the hit gate
// stays on until a heal has read the store's revocations, and carried
// copies issued before now are refused (restartReach).
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
		n.forgetSilentPeers(time.Now())
		n.sendMark(ctx, 0)
	}
}

// peerMarkForgetAfter returns how long a peer may go unheard, with msgMarks
// every interval, before it counts as gone.
func peerMarkForgetAfter(interval time.Duration) time.Duration {
	if interval > math.MaxInt64/peerMarkForgetIntervals {
		return math.MaxInt64
	}
	return max(peerMarkForget, peerMarkForgetIntervals*interval)
}

// forgetSilentPeers forgets the peers silent past the bound at now, and
// settles the forgetting of one on another server as a gap.
func (n *Node) forgetSilentPeers(now time.Time) {
	// The gap opens before the peers are forgotten: forgetting them may
	// raise the mark, and a hit or carried copy checked in between must
	// not find it current with no gap open.
	before := now.Add(-peerMarkForgetAfter(n.pm.interval))
	settled := n.pm.silentElsewhere(before)
	if settled {
		n.settleForgotten()
	}
	// Unsettled, only the peers on the node's own server (its server
	// may have changed meanwhile: see moveTo): the others at the next
	// tick.
	n.pm.forgetSilent(before, settled)
	if settled && n.hitMarker != nil {
		// A heal begun after the peers were forgotten.
		n.wakeHealer()
	}
}
