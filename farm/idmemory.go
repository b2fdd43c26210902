package farm

import (
	"encoding/binary"
	"sync"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// Bounds of a node's memories of session IDs (see idMemory), each kept for
// MaxAge plus MaxSkew (35 s by default). A remembered ID takes 16 bytes of
// map slot and, with the maps' load and growth, 18 to 36 bytes of heap:
// 2^20 IDs take 20 to 40 MB at the most, per memory.
//
// maxWritten bounds the sessions a node remembers as written lately
// (Node.written): some 30,000 new sessions a second on one node.
// maxRetired bounds the IDs retired lately (Node.retired), and maxResumed
// those resumed lately (Node.resumed): every node hears every retirement
// and resumption of the farm, so each covers some 30,000 a second
// farm-wide (the fixed rings they replaced, of 65,536 IDs, covered about
// 1,900).
const (
	maxWritten = 1 << 20
	maxRetired = 1 << 20
	maxResumed = 1 << 20
)

// idMemory remembers session IDs for ttl (MaxAge plus MaxSkew), and when
// each was added. The node keeps three: the sessions it wrote to the
// store where a peer's restriction may have reached the store first
// (Node.written, see recutLate), the IDs retired lately (Node.retired: a
// peer's copy must not bring one back), and those resumed lately
// (Node.resumed: a peer's whole copy, or the store's record loaded before
// the cut's write lands, must not undo the grace cut; it keeps the cut's
// end with each, see newEndMemory). Its
// size follows the rate of additions: two generations of at most ttl
// each, the older dropped whole when the newer is ttl old, so that an ID
// is remembered for at least ttl, and at most twice that (since and has
// report it for ttl). An ID is kept by 8 bytes of its encrypted body,
// which look random: two IDs taken for one (about 1 in 2^44 lookups, with
// 2^20 remembered) cost a needless rewrite of a restriction (which is
// right anyway: a cut only shortens, and a retired session goes), or a
// peer's copy refused (a full handshake at worst).
//
// Past max IDs it forgets the older generation, and until that generation
// would have lapsed, reports every ID as added just now. That is the safe
// answer for each use: a restriction heard meanwhile is written again (a
// store write more); a peer's copy of any session is refused, and a
// session that may have been retired is neither written to the store nor
// put back in it, or is deleted there again (full handshakes, not a
// retired session brought back nor a cut session made whole).
type idMemory struct {
	ttl int64 // nanoseconds
	max int

	mu        sync.Mutex
	cur, prev map[uint64]int64 // when each ID was added, in Unix nanoseconds
	start     int64            // when cur began
	lost      int64            // until then, an ID not found may have been added
	overflows uint64           // times it went past max and forgot IDs

	// curEnd and prevEnd, in a memory made by newEndMemory, hold for the
	// IDs of cur and prev the earliest end added with them (see addEnd),
	// in Unix nanoseconds; nil in other memories.
	curEnd, prevEnd map[uint64]int64
}

func newIDMemory(max int, ttl time.Duration) *idMemory {
	return &idMemory{ttl: int64(ttl), max: max, cur: make(map[uint64]int64), prev: make(map[uint64]int64)}
}

// newEndMemory is newIDMemory for a memory that also keeps an end with
// each ID (see addEnd): the IDs resumed lately with their grace cut's end
// (Node.resumed). The ends take a second pair of maps, as large as the
// first: 2^20 IDs with their ends take 40 to 80 MB at the most.
func newEndMemory(max int, ttl time.Duration) *idMemory {
	w := newIDMemory(max, ttl)
	w.curEnd, w.prevEnd = make(map[uint64]int64), make(map[uint64]int64)
	return w
}

func idKey(id *session.ID) uint64 {
	return binary.LittleEndian.Uint64(id[2:10])
}

// rotateLocked starts a new generation once cur is ttl old.
func (w *idMemory) rotateLocked(now int64) {
	switch age := now - w.start; {
	case age >= 2*w.ttl:
		if len(w.cur) > 0 || len(w.prev) > 0 {
			w.cur, w.prev = make(map[uint64]int64), make(map[uint64]int64)
			if w.curEnd != nil {
				w.curEnd, w.prevEnd = make(map[uint64]int64), make(map[uint64]int64)
			}
		}
		w.start = now
	case age >= w.ttl:
		// Sized as the generation that just ended: it follows the rate.
		w.prev, w.cur = w.cur, make(map[uint64]int64, len(w.cur))
		if w.curEnd != nil {
			w.prevEnd, w.curEnd = w.curEnd, make(map[uint64]int64, len(w.curEnd))
		}
		w.start = now
	}
}

// addLocked remembers id as added at now.
func (w *idMemory) addLocked(id *session.ID, now int64) {
	if len(w.cur)+len(w.prev) >= w.max {
		// Forget the older generation (the newer too, if it is full
		// alone): what it held was added at now at the latest.
		w.lost = max(w.lost, now+w.ttl)
		w.overflows++
		w.prev = make(map[uint64]int64)
		if w.prevEnd != nil {
			w.prevEnd = make(map[uint64]int64)
		}
		if len(w.cur) >= w.max {
			w.cur = make(map[uint64]int64)
			if w.curEnd != nil {
				w.curEnd = make(map[uint64]int64)
			}
		}
	}
	w.cur[idKey(id)] = now
}

// addEnd is add for a memory made by newEndMemory, with end: what the
// memory keeps with id is the earliest end added with it while it is
// remembered (a grace cut only shortens: the earliest cut heard is the
// one that holds).
func (w *idMemory) addEnd(id session.ID, now, end time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t, e := now.UnixNano(), end.UnixNano()
	w.rotateLocked(t)
	if prior, ok := w.endLocked(&id, t); ok {
		e = min(e, prior)
	}
	w.addLocked(&id, t)
	w.curEnd[idKey(&id)] = e
}

// end reports the end kept with id (see addEnd), if id is among the IDs
// remembered: past the bound the memory does not know it.
func (w *idMemory) end(id session.ID, now time.Time) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	e, ok := w.endLocked(&id, now.UnixNano())
	if !ok {
		return time.Time{}, false
	}
	return time.Unix(0, e), true
}

func (w *idMemory) endLocked(id *session.ID, t int64) (int64, bool) {
	if w.curEnd == nil {
		return 0, false
	}
	k := idKey(id)
	if at, ok := w.cur[k]; ok && t < at+w.ttl {
		e, ok := w.curEnd[k]
		return e, ok
	}
	if at, ok := w.prev[k]; ok && t < at+w.ttl {
		e, ok := w.prevEnd[k]
		return e, ok
	}
	return 0, false
}

// add remembers that id was added at now.
func (w *idMemory) add(id session.ID, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t := now.UnixNano()
	w.rotateLocked(t)
	w.addLocked(&id, t)
}

// addNew is add for the new sessions of batch (only those written again
// after a failed write, if later is set), under one lock.
func (w *idMemory) addNew(batch []item, later bool, now time.Time) {
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

// since reports when id was last added, if that was less than ttl before
// now (or, past the bound, may have been: then now).
func (w *idMemory) since(id session.ID, now time.Time) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t := now.UnixNano()
	if at, ok := w.lookupLocked(&id, t); ok {
		return time.Unix(0, at), true
	}
	if t < w.lost {
		return now, true
	}
	return time.Time{}, false
}

// has reports whether id was added less than ttl before now, or past the
// bound may have been. now may be earlier than the latest addition (a
// message's time): an ID added after it is reported too.
func (w *idMemory) has(id session.ID, now time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	t := now.UnixNano()
	if _, ok := w.lookupLocked(&id, t); ok {
		return true
	}
	return t < w.lost
}

// holds is has without the bound's "maybe": it reports whether id is
// among the IDs remembered (added less than ttl before now).
func (w *idMemory) holds(id session.ID, now time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.lookupLocked(&id, now.UnixNano())
	return ok
}

func (w *idMemory) lookupLocked(id *session.ID, t int64) (int64, bool) {
	k := idKey(id)
	if at, ok := w.cur[k]; ok && t < at+w.ttl {
		return at, true
	}
	if at, ok := w.prev[k]; ok && t < at+w.ttl {
		return at, true
	}
	return 0, false
}

// len returns how many IDs the memory holds (some lapsed).
func (w *idMemory) len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.cur) + len(w.prev)
}

// overflow reports whether, at now, the memory answers every ID it does
// not hold as maybe added (it went past max and forgot IDs that would not
// have lapsed yet), and how many times it has gone past max.
func (w *idMemory) overflow(now time.Time) (bool, uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return now.UnixNano() < w.lost, w.overflows
}
