package farm

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/session"
)

// generationKey names a record that the first node to find it missing
// writes with a random value. A node that saw one value and later finds
// another (or none) knows the store lost its data — a restart without
// persistence, a failover to an empty replica — and writes back the
// sessions it holds.
const generationKey = "generation"

// generationTTL is the generation record's lifetime; every check (each
// HealInterval) renews it. It stays under the session lifetime's order so
// that a store whose record area ages by the session lifetime (a NATS
// legacy record bucket) need not keep records longer for it; a farm wholly
// down for longer only makes its nodes write back once more.
const generationTTL = time.Hour

// checkGeneration reads (or creates) the store's generation record and, if
// it changed since the last check, writes back the node's live sessions.
func (n *Node) checkGeneration(ctx context.Context) {
	taker, ok := n.cfg.Records.(transport.RecordTaker)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
	defer cancel()
	v, err := n.cfg.Records.GetRecord(ctx, generationKey)
	if errors.Is(err, transport.ErrNotFound) {
		tok := make([]byte, 16)
		rand.Read(tok)
		var added bool
		added, err = taker.AddRecord(ctx, transport.Item{Key: generationKey, Value: tok, TTL: generationTTL})
		switch {
		case err != nil:
		case added:
			v = tok
		default:
			v, err = n.cfg.Records.GetRecord(ctx, generationKey)
		}
	} else if err == nil {
		err = n.cfg.Records.PutRecords(ctx, transport.Item{Key: generationKey, Value: v, TTL: generationTTL})
	}
	if err != nil {
		return
	}
	n.genMu.Lock()
	prev := n.generation
	n.generation = bytes.Clone(v)
	n.genMu.Unlock()
	if prev == nil || bytes.Equal(prev, v) {
		return
	}
	n.writeBack(context.WithoutCancel(ctx))
}

// writeBack writes the node's live sessions, newest first and at most
// QueueSize of them, to a store that lost its data, and then asks the
// peers to re-send the retirements and cuts they hold.
func (n *Node) writeBack(ctx context.Context) {
	type entry struct {
		id  session.ID
		rec session.Record
	}
	var entries []entry
	for id, rec := range n.cfg.Cache.Snapshot(n.cfg.QueueSize) {
		entries = append(entries, entry{id, rec})
	}
	now := n.cfg.Now()
	hdr := header{typ: valRecord, time: now, sender: n.instance, farm: n.cfg.Farm}
	written := 0
	for len(entries) > 0 {
		chunk := entries[:min(len(entries), n.cfg.BatchSize)]
		entries = entries[len(chunk):]
		items := make([]transport.Item, 0, len(chunk))
		for _, e := range chunk {
			ttl := e.rec.Expires.Sub(now)
			body, err := e.rec.AppendBinary(nil)
			if ttl <= 0 || err != nil {
				continue
			}
			items = append(items, transport.Item{Key: sessionKey(e.id), Value: n.keys.seal(nil, hdr, body, e.id[:]), TTL: ttl})
		}
		wctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
		err := n.cfg.Records.PutRecords(wctx, items...)
		cancel()
		if err != nil {
			n.log.Warn("farm: writing sessions back to the store failed; the rest stay local", "written", written, "err", err)
			break
		}
		written += len(items)
	}
	n.ctr.writtenBack.Add(uint64(written))
	n.log.Warn("farm: the store lost its data; wrote back this node's live sessions", "sessions", written)
	if written > 0 {
		// What was written may undo a retirement or a cut a peer wrote
		// to the new store before: ask the peers to write theirs again
		// (see resendState).
		n.wantResendAsk()
	}
}
