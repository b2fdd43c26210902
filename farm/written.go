package farm

import (
	"encoding/binary"
	"sync"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// maxWritten bounds the sessions a node remembers as written lately (see
// writeMemory): 2^20, some 30,000 new sessions a second on one node over
// the default MaxAge plus MaxSkew (35 s), in 20 to 40 MB at the most.
const maxWritten = 1 << 20

// writeMemory remembers, for ttl (MaxAge plus MaxSkew), the sessions the
// node wrote to the store where a peer's restriction may have reached the
// store first (Node.written, see recutLate), and when it wrote each. Its
// size follows the rate of writes: two generations of at most ttl each,
// the older dropped whole when the newer is ttl old, so that a session is
// remembered for at least ttl, and at most twice that (since reports it
// for ttl). A session is kept by 8 bytes of its ID's encrypted body, which
// look random: two sessions taken for one (about 1 in 2^44 lookups, with
// 2^20 remembered) cost a needless rewrite of a restriction, which is
// right anyway (a cut only shortens, and a retired session goes). Past
// max sessions it forgets the older generation, and until that
// generation would have lapsed, reports every session as written just
// now: each restriction heard meanwhile is written again, which costs
// the store a write but never lets the store keep a session whole.
type writeMemory struct {
	ttl int64 // nanoseconds
	max int

	mu        sync.Mutex
	cur, prev map[uint64]int64 // when each session was written, in Unix nanoseconds
	start     int64            // when cur began
	lost      int64            // until then, a session not found may have been written
}

func newWriteMemory(max int, ttl time.Duration) *writeMemory {
	return &writeMemory{ttl: int64(ttl), max: max, cur: make(map[uint64]int64), prev: make(map[uint64]int64)}
}

func writtenKey(id *session.ID) uint64 {
	return binary.LittleEndian.Uint64(id[2:10])
}

// rotateLocked starts a new generation once cur is ttl old.
func (w *writeMemory) rotateLocked(now int64) {
	switch age := now - w.start; {
	case age >= 2*w.ttl:
		if len(w.cur) > 0 || len(w.prev) > 0 {
			w.cur, w.prev = make(map[uint64]int64), make(map[uint64]int64)
		}
		w.start = now
	case age >= w.ttl:
		// Sized as the generation that just ended: it follows the rate.
		w.prev, w.cur = w.cur, make(map[uint64]int64, len(w.cur))
		w.start = now
	}
}

// addLocked remembers id as written at now.
func (w *writeMemory) addLocked(id *session.ID, now int64) {
	if len(w.cur)+len(w.prev) >= w.max {
		// Forget the older generation (the newer too, if it is full
		// alone): what it held was written at now at the latest.
		w.lost = now + w.ttl
		w.prev = make(map[uint64]int64)
		if len(w.cur) >= w.max {
			w.cur = make(map[uint64]int64)
		}
	}
	w.cur[writtenKey(id)] = now
}

// add remembers that id was written at now.
func (w *writeMemory) add(id session.ID, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t := now.UnixNano()
	w.rotateLocked(t)
	w.addLocked(&id, t)
}

// addNew is add for the new sessions of batch (only those written again
// after a failed write, if later is set), under one lock.
func (w *writeMemory) addNew(batch []item, later bool, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t := now.UnixNano()
	w.rotateLocked(t)
	for i := range batch {
		if it := &batch[i]; it.op == opNew && it.rev == nil && (it.later || !later) {
			w.addLocked(&it.id, t)
		}
	}
}

// since reports when id was last written, if that was less than ttl ago
// (or, past the bound, may have been: then now).
func (w *writeMemory) since(id session.ID, now time.Time) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t, k := now.UnixNano(), writtenKey(&id)
	for _, m := range [2]map[uint64]int64{w.cur, w.prev} {
		if at, ok := m[k]; ok && t < at+w.ttl {
			return time.Unix(0, at), true
		}
	}
	if t < w.lost {
		return now, true
	}
	return time.Time{}, false
}

// len returns how many sessions the memory holds (some lapsed).
func (w *writeMemory) len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.cur) + len(w.prev)
}
