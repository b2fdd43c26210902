package farm

import (
	"context"
	"sync"
	"time"
)

// queue is a bounded FIFO between the cache's hooks, which must never block
// a handshake, and the publisher goroutine. When it is full, push drops the
// oldest item: under a sustained outage the newest sessions are the ones
// worth sending when the transport returns.
type queue struct {
	mu      sync.Mutex
	items   []item // ring buffer
	head, n int
	dropped uint64
	ready   chan struct{} // has a value while the queue is not empty
	kicked  bool          // wake was called: pop returns, even empty

	// With a flush window (setWindow, Config.FlushWindow): pushed holds,
	// beside each item, when it was pushed (on the monotonic clock, since
	// epoch), and urgent is set while an item that must not wait (see
	// mayWait) may be queued. Without one pushed is nil and neither is
	// touched.
	window time.Duration
	epoch  time.Time
	pushed []time.Duration
	urgent bool
	// batch is the most items popHeld takes (Config.BatchSize): a push
	// that brings the queue to it wakes a held pop, as an urgent one does.
	batch int
}

func newQueue(size int) *queue {
	return &queue{items: make([]item, size), ready: make(chan struct{}, 1)}
}

// setWindow gives the queue a flush window (see popHeld), for a popper
// that takes up to batch items at a time. It is called before anything is
// pushed.
func (q *queue) setWindow(d time.Duration, batch int) {
	if d <= 0 {
		return
	}
	q.window, q.epoch, q.batch = d, time.Now(), batch
	q.pushed = make([]time.Duration, len(q.items))
}

// mayWait reports whether it may wait for a flush window: a new session,
// and the grace cut of the parent a resumption issued it from (queued just
// before it, so that the two go out in one batch as without a window). A cut
// is an absolute end, at least ResumeGrace away when it is queued, and Join
// keeps the window under half of ResumeGrace: written late, it still
// lands before the parent's grace is over. A retirement, a released claim
// or a revocation takes a session away at once, and is written and
// published at once.
func mayWait(it *item) bool {
	return (it.op == opNew || it.op == opCut) && it.rev == nil && !it.later
}

// push adds it, dropping the oldest item if the queue is full. It never
// blocks.
//
// With a flush window, an item that may wait and joins others already
// waiting does not wake the popper: a held pop (popHeld) sleeps until the
// window of the oldest item ends, which a later item does not move, so
// waking it would only put it to sleep again (a goroutine wake-up and a
// timer reset for each session a busy node issues). The first item, an
// urgent one, and the one that fills a batch wake it.
func (q *queue) push(it item) {
	q.mu.Lock()
	if q.n == len(q.items) {
		q.items[q.head] = item{}
		q.head = (q.head + 1) % len(q.items)
		q.n--
		q.dropped++
	}
	i := (q.head + q.n) % len(q.items)
	q.items[i] = it
	wake := true
	if q.pushed != nil {
		q.pushed[i] = time.Since(q.epoch)
		if !mayWait(&it) {
			q.urgent = true
		}
		wake = q.n == 0 || q.urgent || q.n+1 >= q.batch
	}
	q.n++
	q.mu.Unlock()
	if wake {
		select {
		case q.ready <- struct{}{}:
		default:
		}
	}
}

// pop waits until the queue has items or ctx is done, and moves up to max
// items into buf. A wake ends the wait too, with nothing moved.
func (q *queue) pop(ctx context.Context, buf []item, max int) ([]item, error) {
	for {
		q.mu.Lock()
		if q.n > 0 {
			return q.popLocked(buf, max), nil
		}
		if q.kicked {
			q.kicked = false
			q.mu.Unlock()
			return buf, nil
		}
		q.mu.Unlock()
		select {
		case <-ctx.Done():
			return buf, ctx.Err()
		case <-q.ready:
		}
	}
}

// popLocked moves up to max items into buf and unlocks q, which holds
// some.
func (q *queue) popLocked(buf []item, max int) []item {
	for q.n > 0 && len(buf) < max {
		buf = append(buf, q.items[q.head])
		q.items[q.head] = item{}
		q.head = (q.head + 1) % len(q.items)
		q.n--
	}
	more := q.n > 0
	if !more {
		q.urgent = false
	}
	q.mu.Unlock()
	if more {
		select {
		case q.ready <- struct{}{}:
		default:
		}
	}
	return buf
}

// popHeld is pop for a queue with a flush window: once the queue has
// items, it waits, up to the window from when the oldest of them was
// pushed, for max of them, and returns early when one that must not wait
// is pushed (mayWait), when wake is called, or when ctx is done; then it
// moves up to max items into buf. It waits on t, which it leaves stopped.
// Items that wait stay in the queue, where they are counted as queued and
// found as not yet stored (addNewIDs), kept by Close (keepQueued) and
// dropped first when it is full.
func (q *queue) popHeld(ctx context.Context, t *time.Timer, buf []item, max int) ([]item, error) {
	armed := false
	defer func() {
		if armed {
			t.Stop()
		}
	}()
	for {
		q.mu.Lock()
		var wait time.Duration
		if q.n > 0 {
			if q.n >= max-len(buf) || q.urgent || q.kicked || ctx.Err() != nil {
				return q.popLocked(buf, max), nil
			}
			if wait = q.pushed[q.head] + q.window - time.Since(q.epoch); wait <= 0 {
				return q.popLocked(buf, max), nil
			}
		} else if q.kicked {
			q.kicked = false
			q.mu.Unlock()
			return buf, nil
		}
		q.mu.Unlock()
		var expired <-chan time.Time
		if wait > 0 {
			t.Reset(wait)
			armed, expired = true, t.C
		}
		select {
		case <-ctx.Done():
			if wait == 0 {
				return buf, ctx.Err()
			}
			// Items are queued: take them at once (above).
		case <-q.ready:
		case <-expired:
			armed = false
		}
	}
}

// wake makes a pop that waits on an empty queue return (nothing), so that
// its caller looks at what else it has to do (see drain: the lifecycle
// backlog).
func (q *queue) wake() {
	q.mu.Lock()
	q.kicked = true
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

func (q *queue) stats() (queued int, dropped uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n, q.dropped
}
