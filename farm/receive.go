package farm

import (
	"bytes"
	"context"
	"sync"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// listener subscribes to the bus until ctx is done.
func (n *Node) listener(ctx context.Context) {
	defer n.wg.Done()
	for failures := 1; ; failures++ {
		err := n.cfg.Bus.Subscribe(ctx, n.receive, n.busState)
		if ctx.Err() != nil {
			return
		}
		n.busState(false, err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff(failures)):
		}
	}
}

func (n *Node) busState(up bool, err error) {
	was := n.connected.Swap(up)
	n.busHeard()
	// Join's first read of the revocations waits for this (see firstSync).
	defer n.busOnce.Do(func() { close(n.busFirst) })
	defer n.updateFallback()
	switch {
	case up && !was:
		n.ctr.connects.Add(1)
		n.revs.signal()
		n.log.Info("farm: connected to the bus")
		// Catch up on revocations published while we were away.
		select {
		case n.heal <- struct{}{}:
		default:
		}
		// And on retirements and grace cuts: kept by the bus, or
		// checked against the store's records, or not vouched for.
		n.busUp(err)
	case !up:
		n.busDown(n.cfg.Now())
		if was {
			n.log.Warn("farm: lost the bus; serving from the local cache", "err", err)
		}
	}
}

// receive handles one message from the bus.
func (n *Node) receive(msg []byte) {
	n.ctr.received.Add(1)
	h, off, err := parseHeader(msg)
	if err != nil {
		n.ctr.rejected[rejection(err)].Add(1)
		return
	}
	if h.sender == n.instance {
		n.ctr.self.Add(1)
		return
	}
	now := n.cfg.Now()
	// The bus hands msg over (see transport.Bus.Subscribe): decrypt it in place.
	body, err := n.keys.openParsed(msg, h, off, n.cfg.Farm, 0, nil, now, n.cfg.MaxAge, n.cfg.MaxSkew, msg[off+nonceLen:off+nonceLen])
	if err != nil {
		n.ctr.rejected[rejection(err)].Add(1)
		return
	}
	n.lag.observe(now.Sub(h.time))
	switch h.typ {
	case msgSessions:
		if n.pend != nil {
			if err := n.receiveLazy(body, now); err != nil {
				n.ctr.rejected[rejectBody].Add(1)
			}
			return
		}
		n.receiveSessions(body, now)
	case msgCut:
		n.receiveCuts(body)
	case msgRevoke:
		revs, err := parseRevocations(body)
		if err != nil {
			n.ctr.rejected[rejectBody].Add(1)
			return
		}
		for _, r := range revs {
			n.ctr.receivedRevocations.Add(1)
			n.cfg.Cache.RemoveChain(r.chain, r.until, session.OriginPeer)
		}
	default:
		n.handlersMu.Lock()
		fn := n.handlers[h.typ]
		n.handlersMu.Unlock()
		if fn == nil {
			n.ctr.rejected[rejectType].Add(1)
			return
		}
		fn(h, body)
	}
}

// itemsPool holds room to decode the received batches that do not fit the
// room receiveSessions has on its stack.
var itemsPool = sync.Pool{New: func() any { return new([]sessionItem) }}

// receiveSessions inserts the sessions of an authentic msgSessions body,
// all of them or, if the body does not decode, none. Decoding allocates
// nothing but each session's server name: a batch of up to 4 sessions is
// decoded on the stack, a larger one into room from itemsPool. The two
// paths stay apart: joined, the pooled slice that is put back would make
// the compiler move the stack room to the heap.
func (n *Node) receiveSessions(body []byte, now time.Time) {
	if countSessions(body) <= 4 {
		var room [4]sessionItem
		items, err := appendParsedSessions(room[:0], body)
		if err != nil {
			n.ctr.rejected[rejectBody].Add(1)
			return
		}
		n.insertSessions(items, now)
		return
	}
	pooled := itemsPool.Get().(*[]sessionItem)
	items, err := appendParsedSessions((*pooled)[:0], body)
	if err != nil {
		n.ctr.rejected[rejectBody].Add(1)
		return // the room is left to the collector
	}
	n.insertSessions(items, now)
	clear(items) // the records alias the message
	*pooled = items[:0]
	itemsPool.Put(pooled)
}

// insertSessions inserts sessions received from a peer, but for those
// retired here lately: a peer's message that was on its way when the
// session was retired (consumed here before the peer's copy arrived) must
// not bring it back.
func (n *Node) insertSessions(items []sessionItem, now time.Time) {
	if !n.revsKnown.Load() {
		// Until the node knows the farm's revocations, a peer's session
		// may be of a revoked chain (one queued on its way as the chain
		// was revoked): leave it to the store (see Join).
		n.ctr.receivedSessions.Add(uint64(len(items)))
		n.ctr.unknownRevs.Add(uint64(len(items)))
		return
	}
	for _, it := range items {
		n.ctr.receivedSessions.Add(1)
		if n.retired.has(it.id, now) {
			n.ctr.insertRefused.Add(1)
			continue
		}
		if rec := n.holdBack(it.id, &it.rec, now); rec == nil {
			n.ctr.insertRefused.Add(1)
			continue
		} else {
			it.rec = *rec // cut here, perhaps
		}
		// Copy the state out of the batch, so that one long-lived
		// session does not keep the whole message in memory.
		it.rec.State = bytes.Clone(it.rec.State)
		if n.cfg.WriteThrough {
			// Before the insert: a removal that follows it
			// must find it (see arrivals.forget).
			n.arr.arrived(arrival{id: it.id, rec: it.rec, ok: true})
		}
		if err := n.cfg.Cache.Insert(it.id, it.rec, session.OriginPeer); err != nil {
			n.ctr.insertRefused.Add(1)
			continue
		}
		if n.neg != nil {
			n.neg.remove(it.id)
		}
		n.ctr.inserted.Add(1)
	}
}

// handle registers fn for authentic bus messages of type t (used by the key
// rotation protocol); a nil fn unregisters.
func (n *Node) handle(t envType, fn func(header, []byte)) {
	n.handlersMu.Lock()
	if fn == nil {
		delete(n.handlers, t)
	} else {
		n.handlers[t] = fn
	}
	n.handlersMu.Unlock()
}
