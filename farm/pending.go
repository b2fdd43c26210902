package farm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"sync"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// defaultPendingSize is the default of Config.PendingSize.
const defaultPendingSize = 65536

// pending holds the sessions peers sent to a node with Config.LazyPeers, as
// they arrived (the record's binary form, decrypted but not decoded), until
// a client presents one. With random balancing over N nodes, a node serves
// about one in N of the sessions it is sent; the rest are never decoded,
// never enter the cache, and leave pending oldest first.
type pending struct {
	mu   sync.Mutex
	m    map[session.ID]pendingEntry
	ring []pendingSlot // insertion order
	head int           // oldest slot
	n    int           // slots in use
	seq  uint64

	evicted uint64
}

type pendingEntry struct {
	rec []byte // the record's binary form (session.Record.AppendBinary)
	seq uint64
}

type pendingSlot struct {
	id  session.ID
	seq uint64
}

func newPending(size int) *pending {
	return &pending{m: make(map[session.ID]pendingEntry), ring: make([]pendingSlot, size)}
}

// put keeps rec for id, replacing what was kept for it, and drops the
// oldest session if pending is full. rec must not be modified afterwards.
func (p *pending) put(id session.ID, rec []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n == len(p.ring) {
		old := p.ring[p.head]
		if e, ok := p.m[old.id]; ok && e.seq == old.seq {
			delete(p.m, old.id)
			p.evicted++
		}
		p.head = (p.head + 1) % len(p.ring)
		p.n--
	}
	p.seq++
	p.m[id] = pendingEntry{rec: rec, seq: p.seq}
	p.ring[(p.head+p.n)%len(p.ring)] = pendingSlot{id: id, seq: p.seq}
	p.n++
}

// take removes and returns the record kept for id.
func (p *pending) take(id session.ID) ([]byte, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.m[id]
	if ok {
		delete(p.m, id)
	}
	return e.rec, ok
}

// drop forgets id, if it is kept.
func (p *pending) drop(id session.ID) {
	p.mu.Lock()
	delete(p.m, id)
	p.mu.Unlock()
}

// dropAll forgets every session kept, and returns how many there were.
func (p *pending) dropAll() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.m)
	clear(p.m)
	return n
}

func (p *pending) stats() (held int, evicted uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.m), p.evicted
}

// Offsets in a record's binary form (see session.Record.AppendBinary): the
// version byte, then expiry, chain start and chain (8 bytes each), then the
// parent's ID.
const (
	recExpiresAt = 1
	recParentAt  = 1 + 8 + 8 + 8
	recMinLen    = recParentAt + session.IDLen
)

var errShortRecord = errors.New("session record too short")

// receiveLazy keeps the sessions of an authentic msgSessions body in
// pending. It decodes only what it needs to keep the set small: a record's
// expiry (an expired one is not kept) and its parent, which a node keeps no
// longer once the client has resumed it elsewhere. The records alias body.
func (n *Node) receiveLazy(body []byte, now time.Time) error {
	nowNano := now.UnixNano()
	for len(body) > 0 {
		if len(body) < session.IDLen+4 {
			return errShortRecord
		}
		id := session.ID(body[:session.IDLen])
		l := binary.BigEndian.Uint32(body[session.IDLen:])
		body = body[session.IDLen+4:]
		if uint64(l) > uint64(len(body)) || l < recMinLen {
			return errShortRecord
		}
		rec := body[:l:l]
		body = body[l:]
		n.ctr.receivedSessions.Add(1)
		if int64(binary.BigEndian.Uint64(rec[recExpiresAt:])) <= nowNano || n.retired.has(id, now) || n.wasResumed(id, now) {
			n.ctr.insertRefused.Add(1)
			continue
		}
		if parent := session.ID(rec[recParentAt : recParentAt+session.IDLen]); parent != (session.ID{}) {
			n.pend.drop(parent)
			n.noteChild(parent, id, time.Unix(0, int64(binary.BigEndian.Uint64(rec[recExpiresAt:]))), now)
			n.cutLazyParent(id, parent, time.Unix(0, int64(binary.BigEndian.Uint64(rec[recExpiresAt:]))), now)
		}
		n.pend.put(id, rec)
		if n.cfg.WriteThrough {
			n.arr.arrived(arrival{id: id})
		}
		n.ctr.pendingKept.Add(1)
	}
	return nil
}

// cutLazyParent cuts parent in the cache to its grace from the issue of
// its child id (which expires at expires), as inserting the child would
// (session.Cache.Insert): the child is kept as received, not inserted, and
// the cache may hold the parent all the same — the node issued it, or
// loaded it for a client — whole, past the grace the resumption elsewhere
// cut it to everywhere else.
func (n *Node) cutLazyParent(id, parent session.ID, expires, now time.Time) {
	if grace := n.cfg.Cache.Config().ResumeGrace; grace > 0 {
		until := n.childIssued(id, expires, now).Add(grace)
		n.cfg.Cache.Cut(parent, until)
		n.noteRecut(parent, until)
	}
	n.recutChild(id, parent, expires, now)
}

// takePending returns the session id if a peer sent it and it is pending,
// decoded, and forgets it: the caller inserts it into the cache.
func (n *Node) takePending(id session.ID) (*session.Record, bool) {
	if n.pend == nil {
		return nil, false
	}
	b, ok := n.pend.take(id)
	if !ok || n.retired.has(id, n.cfg.Now()) {
		return nil, false // retired here lately (consumed, or a peer's retirement)
	}
	var rec session.Record
	if err := rec.UnmarshalBinary(b); err != nil {
		n.ctr.rejected[rejectBody].Add(1)
		return nil, false
	}
	// Copy the state out of the message, so that the cache does not keep
	// the whole batch in memory for one session.
	rec.State = bytes.Clone(rec.State)
	n.ctr.pendingTaken.Add(1)
	return &rec, true
}
