package farm

import (
	"context"
	"sync"
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
}

func newQueue(size int) *queue {
	return &queue{items: make([]item, size), ready: make(chan struct{}, 1)}
}

// push adds it, dropping the oldest item if the queue is full. It never
// blocks.
func (q *queue) push(it item) {
	q.mu.Lock()
	if q.n == len(q.items) {
		q.items[q.head] = item{}
		q.head = (q.head + 1) % len(q.items)
		q.n--
		q.dropped++
	}
	q.items[(q.head+q.n)%len(q.items)] = it
	q.n++
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// pop waits until the queue has items or ctx is done, and moves up to max
// items into buf. A wake ends the wait too, with nothing moved.
func (q *queue) pop(ctx context.Context, buf []item, max int) ([]item, error) {
	for {
		q.mu.Lock()
		if q.n > 0 {
			for q.n > 0 && len(buf) < max {
				buf = append(buf, q.items[q.head])
				q.items[q.head] = item{}
				q.head = (q.head + 1) % len(q.items)
				q.n--
			}
			more := q.n > 0
			q.mu.Unlock()
			if more {
				select {
				case q.ready <- struct{}{}:
				default:
				}
			}
			return buf, nil
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
