package farm

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"sync"
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
// parent is the node's context: the write-back ends with it.
func (n *Node) checkGeneration(parent context.Context) {
	taker, ok := n.cfg.Records.(transport.RecordTaker)
	if !ok {
		return
	}
	// From the primary: the token is added there (AddRecord), and a
	// replica that lags reads none, or an old one, after it was.
	ctx, cancel := context.WithTimeout(transport.PrimaryRead(parent), n.cfg.OpTimeout)
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
		v, err = n.renewGeneration(ctx, v)
	}
	if err != nil {
		return
	}
	n.genMu.Lock()
	prev := n.generation
	n.generation = bytes.Clone(v)
	lost := prev != nil && !bytes.Equal(prev, v)
	if lost {
		// Set with the new generation, under its lock: a reconcile that
		// takes this generation for its outage's sees the flag too.
		n.refilling.Store(true)
	}
	n.genMu.Unlock()
	if !lost {
		if n.owedPrime.Load() {
			n.retryPrime(parent)
		}
		if n.owedWriteBack.Load() {
			// The last write-back failed to write: the store still
			// lacks this node's sessions, and no later read of the
			// generation would show it.
			n.retryWriteBack(parent)
		}
		return
	}
	// A store that lost its data may hand out a set version this node
	// saw before the loss (a transport whose versions are not random):
	// read the revocations whole at the next heal, whatever it says.
	n.tombs.forget()
	n.rids.forget()
	// The strike register went with the data: its markers are written
	// again now, rather than by the first strike of each group, so that
	// tickets issued from now on may carry early data. Beside the
	// write-back, not before it: priming is a round trip or two where the
	// store primes every group at once (transport.RegisterPrimer), but
	// a Striker without it strikes each of the 256 groups in a round
	// trip of its own, which on a slow store would hold the write-back
	// for as long.
	var primed sync.WaitGroup
	if n.cfg.Coord != nil {
		primed.Go(func() { n.retryPrime(parent) })
	}
	n.retryWriteBack(parent)
	primed.Wait()
}

// retryPrime writes the strike register's markers after the store lost
// its data (primeStrikesOnce), and notes whether that is still owed: a
// priming that failed (its round trip outlasting OpTimeout on a loaded
// store, say) is tried again at the next heal, rather than leaving the
// markers to the first strike of each group, which refuses early data to
// every ticket issued before it.
func (n *Node) retryPrime(ctx context.Context) {
	err := n.primeStrikesOnce(ctx)
	owed := err != nil && ctx.Err() == nil
	if owed && !n.owedPrime.Swap(true) {
		n.log.Warn("farm: cannot write the 0-RTT strike register's markers after the store lost its data; trying again at the next heal", "err", err)
	}
	if !owed {
		n.owedPrime.Store(false)
	}
}

// retryWriteBack runs writeBack and notes whether it is still owed: a
// write-back whose store write failed (one chunk outlasting OpTimeout on a
// loaded store, say) is tried again whole at the next heal, rather than
// leaving the rest of the node's sessions out of the store for good.
// refilling stays set until a write-back has written, so that a reconcile
// does not take the records still missing for retirements.
func (n *Node) retryWriteBack(ctx context.Context) {
	ok := n.writeBack(ctx)
	owed := !ok && ctx.Err() == nil
	n.owedWriteBack.Store(owed)
	if !owed {
		n.refilling.Store(false)
	}
}

// renewGeneration writes the generation record v back with a fresh TTL and
// returns the store's generation. A store that can swap (Redis) tells what
// the write replaced: if that was not v, the store changed between the read
// and the write (restarted empty, and the client's retry reached the new
// server, say), and writing v back would hide that from every node. The
// record then gets a new random value, which each node, this one too, takes
// for a loss. A store that cannot swap is written as before.
func (n *Node) renewGeneration(ctx context.Context, v []byte) ([]byte, error) {
	item := transport.Item{Key: generationKey, Value: v, TTL: generationTTL}
	sw, ok := n.cfg.Records.(transport.RecordSwapper)
	if !ok {
		return v, n.cfg.Records.PutRecords(ctx, item)
	}
	old, err := sw.SwapRecord(ctx, item)
	if err == nil && bytes.Equal(old, v) {
		return v, nil
	}
	if err != nil && !errors.Is(err, transport.ErrNotFound) {
		return nil, err
	}
	tok := make([]byte, 16)
	rand.Read(tok)
	item.Value = tok
	return tok, n.cfg.Records.PutRecords(ctx, item)
}

// writeBackSettle is how long writeBack waits, after asking its peers to
// re-send the retirements and grace cuts they hold, before it reads the
// cache to write it back. A peer re-sends at most once every resendEvery
// (see resender), so one that re-sent just before — after its own
// subscription came back from the same outage, say — serves the request
// only at the end of its interval; the half second more covers the
// request's way there, the peer's store write and publish through its
// lifecycle backlog, and the messages' way back. A re-send that comes
// later still is served by the request that follows the write-back.
const writeBackSettle = resendEvery + 500*time.Millisecond

// writeBack writes the node's live sessions, newest first and at most
// QueueSize of them, to a store that lost its data. It first asks the
// peers to re-send the retirements and cuts they hold (msgResend) and
// waits writeBackSettle for them, so that a session this node holds whole
// but that a peer retired or cut, in a message this node missed, is
// written not at all or cut: writing it whole would put back in the store
// a session that any node could then load and resume. It runs on the
// healer's goroutine, off the handshake path; the wait ends, and the
// write-back is given up, when ctx is (the node closing): the sessions
// then stay local, which costs their clients a full handshake elsewhere,
// never a resumption the farm no longer allows. It reports false if a
// store write failed, leaving the rest of the sessions unwritten (see
// retryWriteBack).
func (n *Node) writeBack(ctx context.Context) bool {
	n.writeBackRevocations(ctx)
	if n.askResend(ctx, true) {
		t := time.NewTimer(writeBackSettle)
		select {
		case <-ctx.Done():
			t.Stop()
			n.log.Warn("farm: the store lost its data; closing before writing this node's sessions back")
			return true
		case <-t.C:
		}
	}
	type entry struct {
		id  session.ID
		rec session.Record
	}
	var entries []entry
	now := n.cfg.Now()
	for id, rec := range n.cfg.Cache.Snapshot(n.cfg.QueueSize) {
		// The cache drops a session retired by a peer's message and
		// cuts one cut by it; what it may have let back in since is
		// held back here: a retirement received or made here, and what
		// this node holds itself (see heldLife).
		if n.retired.has(id, now) {
			continue
		}
		r := n.holdBack(id, &rec, now)
		if r == nil {
			continue
		}
		entries = append(entries, entry{id, *r})
	}
	written, failed := 0, false
	for len(entries) > 0 && ctx.Err() == nil {
		chunk := entries[:min(len(entries), n.cfg.BatchSize)]
		entries = entries[len(chunk):]
		// Each chunk's TTLs count from a clock read just before it is
		// sent: the store counts them from when the chunk reaches it,
		// so TTLs counted from before the earlier chunks' writes (each
		// up to OpTimeout) would let later records outlive their
		// sessions by all of that time.
		at := n.cfg.Now()
		hdr := header{typ: valRecord, time: at, sender: n.instance, farm: n.cfg.Farm}
		items := make([]transport.Item, 0, len(chunk))
		for _, e := range chunk {
			ttl := e.rec.Expires.Sub(at)
			body, err := e.rec.AppendBinary(nil)
			if ttl <= 0 || err != nil {
				continue
			}
			// NoLonger: a peer that knew a cut this node missed may
			// have written the session back cut already.
			items = append(items, transport.Item{Key: sessionKey(e.id), Value: n.keys.seal(nil, hdr, body, e.id[:]), TTL: ttl, NoLonger: true})
		}
		wctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
		err := n.cfg.Records.PutRecords(wctx, items...)
		cancel()
		if err != nil {
			n.log.Warn("farm: writing sessions back to the store failed; trying again at the next heal", "written", written, "err", err)
			failed = true
			break
		}
		written += len(items)
	}
	n.ctr.writtenBack.Add(uint64(written))
	n.log.Warn("farm: the store lost its data; wrote back this node's live sessions", "sessions", written)
	if written > 0 {
		// Ask once more, through the rate limit: the first request may
		// have been lost (pub/sub keeps nothing for a peer whose
		// subscription was not back yet), a peer's re-send may have
		// come later than the wait, and a retirement or a cut that
		// reached the store and this node while the snapshot was being
		// written would be undone by it (see resendState).
		n.wantResendAsk()
	}
	return !failed
}

// writeBackRevocations writes the revocations the node's cache remembers
// (its own and those it learned from its peers, until they lapse) back to
// a store that lost its data, where Coord is that store: without them, a
// node that joins (or restarts) afterwards would not know those chains are
// revoked, and would accept their stateless tickets (fallback tickets, or
// a Stateless or Mixed cache's) until they expire. It runs first, before
// the write-back's wait, so that a node joining meanwhile reads them.
// Every node that finds the store emptied writes what it remembers: the
// set then holds one member per node and chain, each lapsing with its
// chain, as after a revocation that several nodes retried. Each chain's
// mark (see chainMark) goes with its tombstone, before it: a node whose
// delivery lags checks its cache's hits against the marks.
func (n *Node) writeBackRevocations(ctx context.Context) {
	if n.cfg.Coord == nil || any(n.cfg.Coord) != any(n.cfg.Records) {
		return // the revocations are elsewhere: this store did not hold them
	}
	now := n.cfg.Now()
	hdr := header{typ: valTombstone, time: now, sender: n.instance, farm: n.cfg.Farm}
	written := 0
	for chain, until := range n.cfg.Cache.Revocations() {
		r := revocation{chain: chain, until: until}
		tb := n.sealTombstone(hdr, r)
		wctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
		var err error
		if m, ok := n.chainMark(hdr, r); ok {
			err = n.cfg.Records.PutRecords(wctx, m)
		}
		if err == nil || errors.Is(err, transport.ErrUnconfirmed) {
			err = n.cfg.Coord.SetAdd(wctx, tombstoneKey, tb.member, tb.until)
		}
		cancel()
		if errors.Is(err, transport.ErrUnconfirmed) {
			// Written, though no replica has it yet (Redis's
			// wait_replicas): a store that lost its data may well have
			// none. The rest must be written too.
			err = nil
		}
		if err != nil {
			n.log.Warn("farm: writing revocations back to the store failed; a node that joins or restarts may accept tickets of those revoked chains until they lapse",
				"written", written, "err", err)
			return
		}
		written++
	}
	// And the revocations by ID this node keeps: the node that holds
	// such a session may not have come back yet.
	hdr.typ = valRevokedID
	for _, r := range n.rids.snapshot(now) {
		m := n.keys.seal(nil, hdr, appendRevokedIDs(nil, []revokedID{r}), nil)
		wctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
		err := n.cfg.Coord.SetAdd(wctx, revokedIDsKey, m, r.until)
		cancel()
		if err != nil && !errors.Is(err, transport.ErrUnconfirmed) {
			n.log.Warn("farm: writing revocations by ID back to the store failed", "written", written, "err", err)
			return
		}
		written++
	}
	if written > 0 {
		n.log.Warn("farm: the store lost its data; wrote back the revocations this node remembers", "revocations", written)
	}
}
