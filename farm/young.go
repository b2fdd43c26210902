package farm

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// Write-through waits on the read side. The handshake that issues a session
// does not wait for the store: the store write and the publish go out at
// once, as in async mode. Instead a node presented an ID it does not hold,
// issued less than WriteThroughTimeout ago (young: its session may still be
// on its way), waits for it, within its LookupTimeout: in broadcast mode
// until the bus brings it (then one store read at the end), in store-only
// mode (or while the bus is down) by re-reading the store until the ID is
// no longer young. An old ID that is missing is a miss at once, as before.
// Every node reads an ID's issue time from the ID itself
// (session.Cache.IssuedAt), whoever minted it.

// recentArrivals is how many of the sessions last received from the bus a
// waiter looks through when it starts: one that arrived between the
// handshake's cache miss and the waiter's registration would otherwise not
// wake it.
const recentArrivals = 256

// Young-wait results, as tlsfarm_farm_young_waits_total labels them.
const (
	youngArrived = iota // the bus brought the session
	youngStored         // a store read found it
	youngGaveUp         // neither, before the ID grew old or the lookup deadline passed
	numYoungResults
)

// arrivals wakes the handshakes waiting for a young session when the bus
// brings it.
type arrivals struct {
	mu      sync.Mutex
	waiters map[session.ID]*waiter
	recent  [recentArrivals]arrival
	index   map[session.ID]int // slot in recent of each ID held there
	next    int
	nwait   atomic.Int32 // len(waiters), read without the lock
}

// A waiter is shared by the handshakes waiting for one ID.
type waiter struct {
	ch   chan struct{} // closed when the session arrives
	rec  arrival       // what arrived; set before ch is closed
	refs int
}

// An arrival is a session received from the bus: its record (inserted into
// the cache), or, with LazyPeers, only its ID (the record is pending).
type arrival struct {
	id  session.ID
	rec session.Record
	ok  bool // rec is set
}

// arrived tells the waiters of v.id, if any, and remembers v briefly (until
// recentArrivals others arrive, or the session leaves the cache). The
// listener calls it before inserting the session.
func (a *arrivals) arrived(v arrival) {
	a.mu.Lock()
	if a.index == nil {
		a.index = make(map[session.ID]int, len(a.recent))
	}
	if old := a.recent[a.next].id; a.index[old] == a.next {
		delete(a.index, old)
	}
	a.recent[a.next] = v
	a.index[v.id] = a.next
	a.next = (a.next + 1) % len(a.recent)
	if a.nwait.Load() > 0 {
		if w := a.waiters[v.id]; w != nil {
			w.rec = v
			close(w.ch)
			delete(a.waiters, v.id)
			a.nwait.Add(-1)
		}
	}
	a.mu.Unlock()
}

// wait registers a waiter for id. If id arrived recently, it returns that
// arrival instead (and no waiter).
func (a *arrivals) wait(id session.ID) (*waiter, arrival, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if i, ok := a.index[id]; ok {
		return nil, a.recent[i], true
	}
	if a.waiters == nil {
		a.waiters = make(map[session.ID]*waiter)
	}
	w := a.waiters[id]
	if w == nil {
		w = &waiter{ch: make(chan struct{})}
		a.waiters[id] = w
		a.nwait.Add(1)
	}
	w.refs++
	return w, arrival{}, false
}

// forget drops id from the recent arrivals: the session left the cache
// (retired, cut short, revoked, expired, evicted), and a waiter must not
// bring it back.
func (a *arrivals) forget(id session.ID) {
	a.mu.Lock()
	if i, ok := a.index[id]; ok {
		a.recent[i] = arrival{}
		delete(a.index, id)
	}
	a.mu.Unlock()
}

// done unregisters a waiter that wait returned.
func (a *arrivals) done(id session.ID, w *waiter) {
	a.mu.Lock()
	w.refs--
	if w.refs == 0 && a.waiters[id] == w {
		delete(a.waiters, id)
		a.nwait.Add(-1)
	}
	a.mu.Unlock()
}

// youngUntil reports whether id is young — issued less than
// WriteThroughTimeout ago by its minter's clock, allowing MaxSkew between
// the clocks — and if so, when it stops being young. Only a write-through
// node waits for young IDs.
func (n *Node) youngUntil(id session.ID, now time.Time) (time.Time, bool) {
	if !n.cfg.WriteThrough {
		return time.Time{}, false
	}
	issued, ok := n.cfg.Cache.IssuedAt(id)
	if !ok {
		return time.Time{}, false
	}
	age := now.Sub(issued)
	if age < -n.cfg.MaxSkew || age >= n.cfg.WriteThroughTimeout {
		return time.Time{}, false
	}
	return issued.Add(n.cfg.WriteThroughTimeout), true
}

func (n *Node) isYoung(id session.ID) bool {
	_, ok := n.youngUntil(id, n.cfg.Now())
	return ok
}

// loadYoung finds the young session id that this node does not hold, waiting
// for it until it is no longer young (until) or ctx ends.
func (n *Node) loadYoung(ctx context.Context, id session.ID, until time.Time) (*session.Record, error) {
	start := time.Now()
	left := until.Sub(n.cfg.Now()) // by the node's clock; waited in real time
	if dl, ok := ctx.Deadline(); ok {
		left = min(left, time.Until(dl))
	}
	end := start.Add(left)
	wait := func(result int, rec *session.Record, err error) (*session.Record, error) {
		if err == errStoreRejected {
			err = nil // the store holds something for id that does not open: a miss
		}
		n.ctr.youngWaits[result].Add(1)
		if rec != nil {
			n.lk.youngWait.observe(time.Since(start))
			cp := *rec
			n.noteLoaded(id, cp.Expires)
			return &cp, nil
		}
		return nil, err
	}
	storeOK := func() bool {
		if n.cfg.Records == nil {
			return false
		}
		if !n.brk.allow(n.cfg.Now()) {
			n.ctr.lookupsSkipped.Add(1)
			return false
		}
		return true
	}

	if n.cfg.Mode == Broadcast && n.connected.Load() {
		// The bus brings it: wait, keeping part of the lookup deadline
		// for one store read at the end (in case the message was lost).
		// The bus is listened to until the end, through the read too: a
		// read that misses says only that the session was not stored
		// yet, and the write and the publish go out at once (one
		// pipeline, where the transport can), so a batch still in
		// flight brings it to both a moment later.
		busEnd := end
		if dl, ok := ctx.Deadline(); ok && n.cfg.Records != nil {
			if e := dl.Add(-n.cfg.LookupTimeout / 2); e.Before(busEnd) {
				busEnd = e
			}
		}
		// came is what the bus brought: its record or, with LazyPeers,
		// the pending one; if that was taken meanwhile, the store read.
		came := func(v arrival) (*session.Record, error) {
			if v.ok {
				return wait(youngArrived, &v.rec, nil)
			}
			if rec, ok := n.takePending(id); ok {
				return wait(youngArrived, rec, nil)
			}
			if ctx.Err() != nil || !storeOK() {
				return wait(youngGaveUp, nil, ctx.Err())
			}
			rec, err := n.lookupStore(ctx, id)
			if rec != nil {
				return wait(youngStored, rec, nil)
			}
			return wait(youngGaveUp, nil, err)
		}
		w, v, found := n.arr.wait(id)
		if found {
			return came(v)
		}
		defer n.arr.done(id, w)
		t := time.NewTimer(time.Until(busEnd))
		defer t.Stop()
		var answer chan youngAnswer // the store read's, once begun
		var readErr error
		read, over := false, false // the read has begun; end has passed
		for {
			select {
			case <-w.ch:
				return came(w.rec)
			case a := <-answer:
				answer = nil
				if a.rec != nil {
					return wait(youngStored, a.rec, nil)
				}
				readErr = a.err
				if over || ctx.Err() != nil {
					return wait(youngGaveUp, nil, readErr)
				}
				// Not stored yet: on to the end, on the bus.
			case <-t.C:
				if !read {
					read = true
					if storeOK() {
						answer = make(chan youngAnswer, 1)
						go func(answer chan<- youngAnswer) {
							rec, err := n.lookupStore(ctx, id)
							answer <- youngAnswer{rec, err}
						}(answer)
					}
					if d := time.Until(end); d > 0 {
						t.Reset(d)
						continue
					}
				}
				over = true
				if answer == nil {
					return wait(youngGaveUp, nil, readErr)
				}
				// The read under way may still find it, within ctx.
			case <-ctx.Done():
				return wait(youngGaveUp, nil, ctx.Err())
			}
		}
	}

	// Store-only, or the bus is down: read the store until the session is
	// there or the ID is no longer young, again after each miss (see
	// youngBackoff), and alongside a read that is slow to answer (see
	// youngHedge): one read stuck in the store's tail must not hold the
	// wait past the write that lands meanwhile.
	if !storeOK() {
		return nil, nil
	}
	answers := make(chan youngAnswer, maxYoungReads) // never blocks a read abandoned here
	reads, pending, misses := 0, 0, 0
	var lastStart, lastMiss time.Time
	read := func() {
		hedge := 0
		if pending > 0 {
			hedge = reads // a read of its own, not the slow one's
		}
		reads++
		pending++
		lastStart = time.Now()
		go func() {
			rec, err := n.lookupStoreAs(ctx, id, hedge)
			answers <- youngAnswer{rec, err}
		}()
	}
	read()
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		// When the next read is due: after a miss, its backoff; while
		// reads are under way, youngHedge after the last began. None once
		// the ID is no longer young, or with maxYoungReads under way.
		var due time.Time
		switch {
		case pending == 0:
			due = lastMiss.Add(youngBackoff(misses))
		case pending < maxYoungReads:
			due = lastStart.Add(youngHedge)
			if lastMiss.After(lastStart) {
				due = minTime(due, lastMiss.Add(youngBackoff(misses)))
			}
		}
		if !due.IsZero() && !due.Before(end) {
			due = time.Time{}
			if pending == 0 {
				return wait(youngGaveUp, nil, nil)
			}
		}
		var timer <-chan time.Time
		if !due.IsZero() {
			t.Reset(time.Until(due)) // no stale tick since Go 1.23
			timer = t.C
		}
		select {
		case a := <-answers:
			pending--
			switch {
			case a.rec != nil && reads == 1:
				// The first read: the session was there already.
				cp := *a.rec
				n.noteLoaded(id, cp.Expires)
				return &cp, nil
			case a.rec != nil:
				return wait(youngStored, a.rec, nil)
			case a.err == errStoreRejected && reads == 1:
				return nil, nil
			case a.err != nil && reads == 1:
				return nil, a.err
			case a.err != nil:
				return wait(youngGaveUp, nil, a.err)
			}
			misses++
			lastMiss = time.Now()
		case <-timer:
			if !storeOK() {
				return wait(youngGaveUp, nil, nil)
			}
			read()
		case <-ctx.Done():
			return wait(youngGaveUp, nil, ctx.Err())
		}
	}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// A youngAnswer is the answer of one of loadYoung's store reads.
type youngAnswer struct {
	rec *session.Record
	err error
}

// A young wait in store-only mode reads the store again alongside a read
// still under way once that read has taken youngHedge, with at most
// maxYoungReads under way at once. The store answers in a millisecond or
// two, but its tail on a loaded host reaches hundreds of milliseconds
// (docs/farm.md, Write-through), and a read that began before the session
// was written cannot find it however long it takes.
const (
	youngHedge    = 50 * time.Millisecond
	maxYoungReads = 3
)

// youngBackoff is the pause before the given re-read of the store for a
// young session: 1ms, doubling to 16ms. A session written at once is there
// within a round trip or two of the store.
func youngBackoff(failures int) time.Duration {
	return time.Millisecond << min(failures-1, 4)
}

// claimYoung is consumeStore for a single-use session: a young session the
// store does not hold yet (its write may still be on its way) is tried
// again, as loadYoung reads it, until it is no longer young or ctx ends.
func (n *Node) claimYoung(ctx context.Context, id session.ID) (bool, error) {
	for failures := 1; ; failures++ {
		until, young := n.youngUntil(id, n.cfg.Now())
		ok, err := n.takeStore(ctx, id, !young)
		if ok || err != nil || !young {
			return ok, err
		}
		d := min(youngBackoff(failures), until.Sub(n.cfg.Now()))
		if d <= 0 {
			n.life.consumeRefused.Add(1)
			return false, nil
		}
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			n.life.consumeRefused.Add(1)
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return false, nil
			}
			return false, ctx.Err()
		}
	}
}
