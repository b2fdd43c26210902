package farm

import (
	"context"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// transportReserve is left under a transport's limit for what the
// transport adds to the farm's bytes (headers, a value prefix).
const transportReserve = 1024

// limitOf returns the largest message the node may send through v (a Bus
// or a Store).
func limitOf(v any) int {
	lim := transport.MaxMessageSize
	if l, ok := v.(transport.MessageLimiter); ok {
		if m := l.MaxMessageSize(); m > 0 {
			lim = min(lim, m-transportReserve)
		}
	}
	return lim
}

// busMessages seals the bus messages of batch: its new sessions (in
// broadcast mode) and its revocations, each kind split into as many
// messages as the size limit needs. A session that cannot be encoded, or
// that alone exceeds the limit, is left out and counted
// (tlsfarm_farm_unencodable_total): it never costs its neighbours their
// delivery. It returns the messages and the numbers of sessions and
// revocations they carry.
func (n *Node) busMessages(hdr header, batch []item) (msgs [][]byte, news, revs int) {
	limit := limitOf(n.cfg.Bus) - envelopeOverhead(len(hdr.farm))
	if n.cfg.Mode == Broadcast {
		hdr.typ = msgSessions
		var body []byte
		for i := range batch {
			it := &batch[i]
			if it.rev != nil || it.op != opNew {
				continue
			}
			at := len(body)
			more, err := appendSessions(body, []sessionItem{{id: it.id, rec: it.rec}})
			if err != nil {
				n.ctr.unencodable.Add(1)
				continue
			}
			body = more
			if len(body) > limit {
				item := body[at:]
				if len(item) > limit {
					body = body[:at]
					n.ctr.unencodable.Add(1)
					continue
				}
				msgs = append(msgs, n.keys.seal(nil, hdr, body[:at], nil))
				body = append(body[:0], item...)
			}
			news++
		}
		if len(body) > 0 {
			msgs = append(msgs, n.keys.seal(nil, hdr, body, nil))
		}
	}
	hdr.typ = msgRevoke
	var body []byte
	for i := range batch {
		if batch[i].rev == nil {
			continue
		}
		if len(body)+revocationLen > limit {
			msgs = append(msgs, n.keys.seal(nil, hdr, body, nil))
			body = body[:0]
		}
		body = appendRevocations(body, []revocation{*batch[i].rev})
		revs++
	}
	if len(body) > 0 {
		msgs = append(msgs, n.keys.seal(nil, hdr, body, nil))
	}
	return n.cutMessages(hdr, batch, limit, msgs), news, revs
}

// storeItems returns the store's part of batch: the new sessions to put,
// the keys of revoked sessions to delete, and the revocations to record. A
// session that cannot be encoded, or whose value would exceed the store's
// limit, is left out, counted and marked opDropped (so that it never enters
// the backlog), and its write-through waiter is told at once. Retirements
// and cuts add their part through lifecycleStoreItems; released claims are
// written by restoreAll.
func (n *Node) storeItems(hdr header, batch []item, now time.Time) (puts []transport.Item, dels []string, revs []revocation) {
	limit := limitOf(n.cfg.Records)
	hdr.typ = valRecord
	for i := range batch {
		it := &batch[i]
		if it.rev != nil {
			revs = append(revs, *it.rev)
			dels = append(dels, sessionKey(it.id))
			continue
		}
		if it.op != opNew {
			puts, dels = n.lifecycleStoreItems(hdr, it, now, puts, dels)
			continue
		}
		ttl := it.rec.Expires.Sub(now)
		if ttl <= 0 {
			continue
		}
		body, err := encodeRecord(&it.rec)
		var v []byte
		if err == nil {
			v = n.keys.seal(nil, hdr, body, it.id[:])
		}
		if err != nil || len(v) > limit {
			n.ctr.unencodable.Add(1)
			it.op = opDropped // not for the backlog either
			continue
		}
		// A late write (its first failed) applies the cut mark a peer's
		// cut may have left in the store meanwhile (see
		// transport.Item.Late): this node read the session before it
		// heard of that cut, perhaps. A first write is a plain write
		// here; lateFirst makes it a late one where peers may have the
		// session first.
		puts = append(puts, transport.Item{Key: sessionKey(it.id), Value: v, TTL: ttl, Late: it.later})
	}
	return puts, dels, revs
}

// lateFirst makes the first writes of new sessions among puts late writes
// (transport.Item.Late) in broadcast mode, for a write that the bus may
// overtake: the store on a path of its own, a write and a publish made
// concurrently, a Redis Cluster, a carried ticket. A peer that has the
// session from the bus first and resumes it cuts the store's record,
// finds none, and leaves the cut mark (or, retiring it, the retirement
// mark); a plain first write landing after that would put the session
// back whole, for any node that loads it from the store past its grace
// (or, taken, a second time), until this node heard of the cut and wrote
// it again (recutWritten) — never, if its bus path stays slow until the
// mark has lapsed. The late write applies the mark where it finds one;
// the mark lapses with the cut, so a read that honoured it could not. A
// write that lands before any peer can hear of the session (an ordered
// Batcher's one round trip) stays a plain write. In broadcast mode the
// only puts that are neither a cut, a retirement nor a write-back are
// new sessions' records.
func (n *Node) lateFirst(puts []transport.Item) {
	if n.cfg.Mode != Broadcast {
		return
	}
	for i := range puts {
		if p := &puts[i]; !p.Retire && !p.IfPresent && !p.NoLonger {
			p.Late = true
		}
	}
}

// flushStore writes one batch to the store, on the store's own path: a
// store that fails or hangs delays only this path (at most OpTimeout a
// batch, then backoff), never the bus. It tries whatever the health probe
// says: a probe that fails on a loaded machine must not cost sessions.
func (n *Node) flushStore(ctx context.Context, batch []item) bool {
	defer func() { n.settleStore(batch, n.cfg.Now()) }()
	read := n.readMark()
	n.refreshLater(batch)
	now := n.cfg.Now()
	hdr := header{time: now, sender: n.instance, farm: n.cfg.Farm}
	puts, dels, revs := n.storeItems(hdr, batch, now)
	n.lateFirst(puts) // the store on a path of its own: peers may have the batch's sessions first
	restores := hasOp(batch, opRestore)
	if len(puts) == 0 && len(revs) == 0 && len(dels) == 0 && !restores {
		return true
	}
	began := n.storeProbe.begunCount()
	err := n.writeStore(ctx, hdr, batch, puts, dels, revs, restores)
	if ctx.Err() == nil {
		n.storeOutcome(batch, err, began)
	}
	if err == nil && len(puts) > 0 {
		n.recutWritten(batch, true, read)
	}
	if err != nil {
		// Also when the write was cancelled by Close: see flush.
		n.keepLifecycle(n.lifesq, batch)
	}
	n.storeWritten(ctx, recordPuts(puts), err)
	return err == nil
}

// writeStore writes the store's part of batch — its new records,
// deletions and revocations, and, if restores, its released claims —
// within OpTimeout. Both paths to the store (flush and flushStore) write
// through it.
func (n *Node) writeStore(ctx context.Context, hdr header, batch []item, puts []transport.Item, dels []string, revs []revocation, restores bool) error {
	sctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
	defer cancel()
	var tombs []tombstone
	for _, r := range revs {
		tombs = append(tombs, n.sealTombstone(hdr, r))
	}
	err := n.storeBatch(sctx, puts, dels, tombs)
	if restores {
		if rerr := n.restoreAll(sctx, hdr, batch); err == nil {
			err = rerr
		}
	}
	return err
}

// storeWritten counts the outcome of a store write of puts records, and
// logs the first failure of a run of them.
func (n *Node) storeWritten(ctx context.Context, puts int, err error) {
	if err != nil {
		n.ctr.storeWriteErrors.Add(1)
		if ctx.Err() == nil {
			n.logOnce(&n.ctr.storeErrLogged, "farm: store write failed; sessions stay resumable here, but other nodes cannot look them up", err)
		}
		return
	}
	n.ctr.storeWrites.Add(uint64(puts))
	n.storeAnswered(puts)
	n.ctr.storeErrLogged.Store(false)
}
