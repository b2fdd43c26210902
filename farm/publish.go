package farm

import (
	"context"
	"sync"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/retry"
	"github.com/tlsfarm/tlsfarm/session"
)

// onEvent is the cache hook. It runs on the handshake's goroutine and only
// queues: in write-through mode too, where the waiting is done by the node a
// client presents a young session to (see young.go).
func (n *Node) onEvent(ev session.Event) {
	n.lifecycleEvent(ev)
	if ev.Kind == session.EventRemove && n.cfg.WriteThrough {
		n.arr.forget(ev.ID)
	}
	switch {
	case ev.Kind == session.EventNew && ev.Origin == session.OriginHandshake:
		n.enqueue(item{id: ev.ID, rec: ev.Record})
	case ev.Kind == session.EventNew && n.rids.len() > 0 && n.rids.has(ev.ID, n.cfg.Now()):
		// A peer's copy (or the store's) of a session revoked by ID.
		n.revokeHeldID(ev.ID)
	case ev.Kind == session.EventRemove && ev.Reason == session.Removed && ev.Origin == session.OriginAPI:
		n.addRevocation(ev.ID, revocation{
			chain: ev.Record.Chain,
			until: n.cfg.Cache.ChainEnd(ev.Record),
			start: ev.Record.ChainStart,
		})
	}
}

// enqueue queues it for publishing. Where the store has a path of its own
// (n.sq), the bus's part goes to n.q and the store's to n.sq. Only what has a bus
// part goes to n.q: revocations, new sessions in broadcast mode,
// retirements, and grace cuts in store-only mode (see busMessages); a
// released claim (opRestore) is the store's alone. Lifecycle items must
// come through here too, never straight to n.q: on the store's own path
// (a bus that is not also a Batcher store, such as NATS) n.q never writes
// the store. Retirements and grace cuts are also kept for re-sends
// (keepSent).
func (n *Node) enqueue(it item) {
	if it.op == opRetire || it.op == opCut {
		it.sent = n.keepSent(it)
	}
	if n.sq == nil {
		n.q.push(it)
		return
	}
	var bus bool
	switch it.op {
	case opNew:
		bus = it.rev != nil || n.cfg.Mode == Broadcast
	case opRetire:
		bus = true
	case opCut:
		bus = n.cfg.Mode == StoreOnly // broadcast peers cut on the child
	}
	if bus {
		n.q.push(it)
	}
	n.sq.push(it)
}

// maxCatchUpIDWaits bounds the failed reads of the revocations by ID that
// the catch-up after an outage waits for in a row (see catchUpIDs), while
// the store's probe answers, before it writes the backlog all the same.
const maxCatchUpIDWaits = 3

// drain empties q in batches through flush (the bus's path, which also
// writes the store when sq is nil, or the store's), backing off on its own
// while flush fails. With a flush window (Config.FlushWindow) it lets new
// sessions wait for more to batch with them; the backlogs, and anything
// else queued, go at once. It returns when ctx is done or, once closing is done
// (Close), when there is nothing left to write or the transport is
// failing: see Close.
func (n *Node) drain(ctx, closing context.Context, q *queue, flush func(context.Context, []item) bool) {
	defer n.pubs.Done()
	var batch []item
	failures := 0
	done, cancel := context.WithCancel(context.Background())
	cancel() // a context that is done: pop without waiting
	catchUp := q == n.storeQueue()
	idWaits := 0   // failed reads of the revocations by ID the backlog waited for, the store's probe answering
	readFails := 0 // and all of them, for the backoff
	life := n.lifeq
	fl := &n.flights[0]
	if q == n.sq {
		life = n.lifesq
		fl = &n.flights[1]
	}
	var held *time.Timer // the flush window's, reused (see queue.popHeld)
	if q.window > 0 {
		held = time.NewTimer(q.window)
		held.Stop()
	}
	for {
		if ctx.Err() != nil || closing.Err() != nil && (failures > 0 || n.pathFailing(q)) {
			return // stopped, or closing while the transport fails: see Close
		}
		batch = batch[:0]
		kept := 0 // the first items of batch are from the lifecycle backlog
		if catchUp && n.backlog.len() > 0 && idWaits < maxCatchUpIDWaits && closing.Err() == nil && n.catchUpIDs(ctx, closing) != nil {
			// The sessions revoked by ID during the outage are not
			// known yet (catchUpIDs): the backlog waits for them, a
			// few reads at most (a Coordinator that fails longer than
			// the records must not keep the sessions out of the
			// store), and not once Close has begun, while what is new
			// goes on. A read that failed while the store's probe went
			// unanswered (the store, or this node's path to it, out)
			// does not count: the records could not have taken the
			// backlog either, and reads that failed through an outage
			// would have spent the budget by the time the path came
			// back, which then wrote the backlog unread, a session
			// revoked by ID meanwhile with it.
			readFails++
			if n.storeProbe.healthy() {
				idWaits++
			}
			batch, _ = q.pop(done, batch, n.cfg.BatchSize)
			if len(batch) == 0 {
				select {
				case <-closing.Done():
					return
				case <-time.After(backoff(readFails)):
				}
				continue
			}
		} else if catchUp && n.backlog.len() > 0 {
			// Catch up after an outage: sessions that did not reach the
			// farm, newest first, with whatever is new.
			idWaits, readFails = 0, 0
			batch = n.backlog.popNewest(batch, n.cfg.BatchSize, n.cfg.Now())
			batch, _ = q.pop(done, batch, n.cfg.BatchSize)
			if len(batch) == 0 {
				continue
			}
		} else if life.len() > 0 {
			// Then the retirements and cuts that did not reach it: after
			// the sessions, which would otherwise undo them in the store.
			batch = life.pop(batch, n.cfg.BatchSize, n.cfg.Now())
			kept = len(batch)
			batch, _ = q.pop(done, batch, n.cfg.BatchSize)
			if len(batch) == 0 {
				continue
			}
		} else {
			// Wait for items until Close, then only take what is left;
			// with a flush window, wait up to the window for more new
			// sessions (popHeld), but never once Close has begun.
			var err error
			if held != nil {
				batch, err = q.popHeld(closing, held, batch, n.cfg.BatchSize)
			} else {
				batch, err = q.pop(closing, batch, n.cfg.BatchSize)
			}
			if err != nil {
				return // the queue is empty, and the node closing
			}
			if len(batch) == 0 {
				continue // woken (queue.wake): the lifecycle backlog has items
			}
		}
		fl.set(batch)
		ok := n.flushOne(ctx, closing, q, failures > 0, batch, flush)
		fl.clear()
		life.settle(ok, n.cfg.Now())
		if ok {
			if kept > 0 && q == n.q && n.sq != nil {
				n.storeAgain(batch[:kept])
			}
			failures = 0
			continue
		}
		// The transport is failing: back off, letting the queue absorb
		// (and, if it must, drop the oldest of) what arrives meanwhile.
		failures++
		select {
		case <-closing.Done():
			return
		case <-time.After(backoff(failures)):
		}
	}
}

// flushOne runs flush for one batch of q's path. The write is cancelled
// when ctx is done, or as soon as closing is done if the path is failing
// (failing: the last write failed; else see pathFailing): Close waits for
// a write in flight only while the transport works. (A transport may
// still take until the write's own deadline to give up.)
func (n *Node) flushOne(ctx, closing context.Context, q *queue, failing bool, batch []item, flush func(context.Context, []item) bool) bool {
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(closing, func() {
		if failing || n.pathFailing(q) {
			cancel()
		}
	})
	defer stop()
	return flush(fctx, batch)
}

// pathFailing reports whether the transport q's path writes to was known
// to be failing when Close began: the store, if the path writes it, is
// marked failing by its last write, or the bus, if the path publishes on
// it, had reported itself down. The health probes are not asked: one that
// fails on a loaded machine must not cost the sessions Close would write.
func (n *Node) pathFailing(q *queue) bool {
	if q == n.storeQueue() && n.cfg.Records != nil {
		n.deg.mu.Lock()
		failing := n.deg.storeFailing
		n.deg.mu.Unlock()
		if failing {
			return true
		}
	}
	return q == n.q && n.busDownAtEnd.Load()
}

// backoff returns the wait after the given number of consecutive failures:
// exponential from 50ms to 2s, with jitter.
func backoff(failures int) time.Duration {
	return retry.Backoff(failures, 50*time.Millisecond, 2*time.Second)
}

// flush publishes one batch and reports whether every part succeeded. It
// also writes the batch to the store unless the store has a path of its
// own (flushStore).
func (n *Node) flush(ctx context.Context, batch []item) bool {
	read := n.readMark()
	n.refreshLater(batch)
	now := n.cfg.Now()
	hdr := header{time: now, sender: n.instance, farm: n.cfg.Farm}
	msgs, news, nrevs := n.busMessages(hdr, batch)
	var puts []transport.Item
	var dels []string
	var revs []revocation
	switch {
	case n.sq != nil:
	case n.cfg.Records != nil:
		puts, dels, revs = n.storeItems(hdr, batch, now)
	case n.cfg.Coord != nil: // no records: only the tombstones are kept
		for _, it := range batch {
			if it.rev != nil {
				revs = append(revs, *it.rev)
			}
		}
	}

	// The store write and the publish go out at once: in one round trip
	// where the transport can do both (the common case: new sessions, grace
	// cuts and retirements, no revocations), else concurrently. Peers hear of a session one round
	// trip sooner than if one waited for the other.
	var storeErr, pubErr error
	began := n.storeProbe.begunCount() // before the store write (see setStoreOutcome)
	restores := n.sq == nil && n.cfg.Records != nil && hasOp(batch, opRestore)
	stored := n.cfg.Records != nil && (len(puts) > 0 || len(dels) > 0 || restores) || n.cfg.Coord != nil && len(revs) > 0
	// Whether the bus may bring the batch's new sessions to peers before
	// the store has them (see recutWritten): only the one round trip of
	// an ordered Batcher writes first.
	b, combined := n.cfg.Bus.(transport.Batcher)
	combined = combined && stored && len(revs) == 0 && !restores && any(n.cfg.Bus) == any(n.cfg.Records)
	// A carried ticket may bring the session to a peer before either
	// (see Config.CarrySessions): that peer's cut of the store's record
	// can then find none.
	first := !combined || n.publishFirst || n.carryAllowed()
	if first {
		n.lateFirst(puts)
	}
	if combined {
		bctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
		storeErr = n.putAndPublish(bctx, b, puts, dels, msgs)
		pubErr = storeErr
		cancel()
	} else {
		var wg sync.WaitGroup
		if stored {
			wg.Add(1)
			go func() {
				defer wg.Done()
				storeErr = n.writeStore(ctx, hdr, batch, puts, dels, revs, restores)
			}()
		}
		if len(msgs) > 0 {
			pctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
			pubErr = n.publish(pctx, msgs...)
			cancel()
		}
		wg.Wait()
	}

	ok := true
	if stored && ctx.Err() == nil {
		n.storeOutcome(batch, storeErr, began)
	} else if n.cfg.Records == nil && len(msgs) > 0 && pubErr != nil && ctx.Err() == nil {
		n.keepForLater(batch) // no store: the bus is the only way to the farm
	}
	if storeErr != nil || pubErr != nil {
		// Also when the write was cancelled by Close: the lifecycle
		// file keeps what did not get through.
		if pubErr != nil {
			n.keepChildCuts(batch) // first: see keepChildCuts
		}
		n.keepLifecycle(n.lifeq, batch)
	}
	if stored {
		n.storeWritten(ctx, recordPuts(puts), storeErr)
		ok = storeErr == nil
		if ok && len(puts) > 0 && n.sq == nil {
			n.recutWritten(batch, first, read)
		}
	}
	if n.sq == nil {
		n.settleStore(batch, n.cfg.Now())
	}
	if len(msgs) > 0 {
		if pubErr != nil {
			ok = false
			n.ctr.publishErrors.Add(1)
			n.ctr.unpublished.Add(uint64(len(batch)))
			if ctx.Err() == nil {
				n.logOnce(&n.ctr.publishErrLogged, "farm: publish failed; local caches keep serving", pubErr)
			}
		} else {
			n.ctr.published.Add(uint64(news))
			n.ctr.publishedRevocations.Add(uint64(nrevs))
			n.countCutsSent(batch)
			n.ctr.publishErrLogged.Store(false)
		}
	}
	return ok
}

// storeBatch writes puts, deletes dels and adds tombs to the store's set
// of revocations, in that order, and stops at the first error.
func (n *Node) storeBatch(ctx context.Context, puts []transport.Item, dels []string, tombs []tombstone) error {
	if len(puts) > 0 {
		if err := n.cfg.Records.PutRecords(ctx, puts...); err != nil {
			return err
		}
	}
	if len(dels) > 0 && n.cfg.Records != nil {
		if err := n.cfg.Records.DeleteRecords(ctx, dels...); err != nil {
			return err
		}
	}
	for _, tb := range tombs {
		if err := n.cfg.Coord.SetAdd(ctx, tombstoneKey, tb.member, tb.until); err != nil {
			return err
		}
	}
	return nil
}

// A tombstone is a revocation sealed as a member of the store's set of
// revocations (tombstoneKey), and when it lapses. Adding the same member
// again only sets its time; a revocation sealed anew is another member.
type tombstone struct {
	member []byte
	until  time.Time
}

// sealTombstone seals r as a member of the store's set of revocations,
// with hdr's time and sender.
func (n *Node) sealTombstone(hdr header, r revocation) tombstone {
	hdr.typ = valTombstone
	return tombstone{member: n.keys.seal(nil, hdr, appendRevocations(nil, []revocation{r}), nil), until: r.until}
}
