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
// 2^20 IDs take 20 to 40 MB at the most, per memory (24 bytes and 30 to
// 60 MB in the memory of the IDs resumed, which keeps an end with each:
// see endMemory).
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
// end with each, see endMemory). E is what it keeps with each ID besides
// when it was added: nothing (struct{}), but for endMemory's ends. Its size
// follows the rate of additions: two generations of at most ttl each,
// the older dropped whole when the newer is ttl old, so that an ID
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
type idMemory[E any] struct {
	ttl int64 // nanoseconds
	max int

	mu        sync.Mutex
	cur, prev map[uint64]idEntry[E] // each ID's entry: when it was added, and its value
	start     int64                 // when cur began
	lost      int64                 // until then, an ID not found may have been added
	overflows uint64                // times it went past max and forgot IDs
}

// idEntry is what an idMemory keeps with an ID: when it was added, in Unix
// nanoseconds, and the memory's value of it, if any (see endMemory). The
// value comes first: with none (struct{}) the entry is 8 bytes, where a
// zero-size last field would be padded to 16.
type idEntry[E any] struct {
	val E
	at  int64
}

// newIDMemory returns a memory of IDs with nothing kept with them but
// when they were added (Node.written, Node.retired).
func newIDMemory(max int, ttl time.Duration) *idMemory[struct{}] {
	return newMemory[struct{}](max, ttl)
}

func newMemory[E any](max int, ttl time.Duration) *idMemory[E] {
	return &idMemory[E]{ttl: int64(ttl), max: max, cur: make(map[uint64]idEntry[E]), prev: make(map[uint64]idEntry[E])}
}

func idKey(id *session.ID) uint64 {
	return binary.LittleEndian.Uint64(id[2:10])
}

// rotateLocked starts a new generation once cur is ttl old.
func (w *idMemory[E]) rotateLocked(now int64) {
	switch age := now - w.start; {
	case age >= 2*w.ttl:
		if len(w.cur) > 0 || len(w.prev) > 0 {
			w.cur, w.prev = make(map[uint64]idEntry[E]), make(map[uint64]idEntry[E])
		}
		w.start = now
	case age >= w.ttl:
		// Sized as the generation that just ended: it follows the rate.
		w.prev, w.cur = w.cur, make(map[uint64]idEntry[E], len(w.cur))
		w.start = now
	}
}

// addLocked remembers id as added at now, with val.
func (w *idMemory[E]) addLocked(id *session.ID, now int64, val E) {
	if len(w.cur)+len(w.prev) >= w.max {
		// Forget the older generation (the newer too, if it is full
		// alone): what it held was added at now at the latest.
		w.lost = max(w.lost, now+w.ttl)
		w.overflows++
		w.prev = make(map[uint64]idEntry[E])
		if len(w.cur) >= w.max {
			w.cur = make(map[uint64]idEntry[E])
		}
	}
	w.cur[idKey(id)] = idEntry[E]{val: val, at: now}
}

// add remembers that id was added at now.
func (w *idMemory[E]) add(id session.ID, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t := now.UnixNano()
	w.rotateLocked(t)
	var none E
	w.addLocked(&id, t, none)
}

// addNew is add for the new sessions of batch (only those written again
// after a failed write, if later is set), under one lock.
func (w *idMemory[E]) addNew(batch []item, later bool, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t := now.UnixNano()
	w.rotateLocked(t)
	var none E
	for i := range batch {
		if it := &batch[i]; it.op == opNew && it.rev == nil && (it.later || !later) {
			w.addLocked(&it.id, t, none)
		}
	}
}

// since reports when id was last added, if that was less than ttl before
// now (or, past the bound, may have been: then now).
func (w *idMemory[E]) since(id session.ID, now time.Time) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t := now.UnixNano()
	if e, ok := w.lookupLocked(&id, t); ok {
		return time.Unix(0, e.at), true
	}
	if t < w.lost {
		return now, true
	}
	return time.Time{}, false
}

// has reports whether id was added less than ttl before now, or past the
// bound may have been. now may be earlier than the latest addition (a
// message's time): an ID added after it is reported too.
func (w *idMemory[E]) has(id session.ID, now time.Time) bool {
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
func (w *idMemory[E]) holds(id session.ID, now time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.lookupLocked(&id, now.UnixNano())
	return ok
}

// lookupLocked returns what the memory keeps with id, if id was added
// less than ttl before t: the newer generation's, if it holds id.
func (w *idMemory[E]) lookupLocked(id *session.ID, t int64) (idEntry[E], bool) {
	k := idKey(id)
	if e, ok := w.cur[k]; ok && t < e.at+w.ttl {
		return e, true
	}
	if e, ok := w.prev[k]; ok && t < e.at+w.ttl {
		return e, true
	}
	return idEntry[E]{}, false
}

// len returns how many IDs the memory holds (some lapsed).
func (w *idMemory[E]) len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.cur) + len(w.prev)
}

// overflow reports whether, at now, the memory answers every ID it does
// not hold as maybe added (it went past max and forgot IDs that would not
// have lapsed yet), and how many times it has gone past max.
func (w *idMemory[E]) overflow(now time.Time) (bool, uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return now.UnixNano() < w.lost, w.overflows
}

// endMemory is the memory of the IDs resumed lately (Node.resumed): an
// idMemory that keeps with each ID, in the one map of its generation, the
// earliest end of a grace cut heard of it, in Unix nanoseconds (see
// addEnd). An ID with its end takes 24 bytes of map slot: 2^20 IDs take
// 30 to 60 MB at the most.
type endMemory idMemory[int64]

func newEndMemory(max int, ttl time.Duration) *endMemory {
	return (*endMemory)(newMemory[int64](max, ttl))
}

func (w *endMemory) mem() *idMemory[int64] { return (*idMemory[int64])(w) }

// addEnd remembers id as added at now with end: what the memory keeps
// with id is the earliest end added with it while it is remembered (a
// grace cut only shortens: the earliest cut heard is the one that holds).
func (w *endMemory) addEnd(id session.ID, now, end time.Time) {
	m := w.mem()
	m.mu.Lock()
	defer m.mu.Unlock()
	t, e := now.UnixNano(), end.UnixNano()
	m.rotateLocked(t)
	if prior, ok := m.lookupLocked(&id, t); ok {
		e = min(e, prior.val)
	}
	m.addLocked(&id, t, e)
}

// end reports the end kept with id (see addEnd), if id is among the IDs
// remembered: past the bound the memory does not know it.
func (w *endMemory) end(id session.ID, now time.Time) (time.Time, bool) {
	m := w.mem()
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.lookupLocked(&id, now.UnixNano())
	if !ok {
		return time.Time{}, false
	}
	return time.Unix(0, e.val), true
}

// has is idMemory.has: whether id was resumed lately, or past the bound
// may have been.
func (w *endMemory) has(id session.ID, now time.Time) bool { return w.mem().has(id, now) }

// len is idMemory.len.
func (w *endMemory) len() int { return w.mem().len() }

// overflow is idMemory.overflow.
func (w *endMemory) overflow(now time.Time) (bool, uint64) { return w.mem().overflow(now) }
