package farm

import (
	"encoding/binary"
	"errors"
	"time"

	"github.com/tlsfarm/tlsfarm/ticket"
)

// A farm key set is a ticket.State followed by a trailer of 10 bytes:
//
//	extra  2  how many more previous keys than Keep rotations keep
//	until  8  the last epoch a rotation keeps them for
//
// or, in the form this version writes when it can, extra 0 followed by
// the same facts and the writer's rotation schedule in 8 bytes (a big-endian
// uint64, most significant bits first):
//
//	tag       4  paramsTag
//	extra     7  as above
//	until    10  until less the set's epoch (0 when extra is 0)
//	keep     10  the writer's Keep
//	interval 33  the writer's Interval, in milliseconds
//
// Older versions write the first form, and no trailer at all when extra is
// 0; they read any trailer whose extra is 0 as no trailer, and refuse a
// trailer of any other length than 10. A set in the second form therefore
// reads on an older node as a set without merged keys: an older lease
// holder keeps only Keep previous keys when it rotates it, dropping early
// the farm's oldest keys behind a merge's (never keeping a key longer).
// A schedule the second form cannot hold (an Interval not a whole number
// of milliseconds or of 2^33 ms or more, a Keep over 1023) is written in
// the first form, and readers age the set by their own schedule.
//
// While merged keys are kept, this version writes a third form when it
// knows where they are, which also says so (the interval in seconds):
//
//	tag       4  blockTag
//	extra     7  as above (more than 0)
//	until    10  as above
//	keep     10  the writer's Keep
//	at       10  where the merged keys start in Previous
//	interval 23  the writer's Interval, in seconds
//
// Versions that read the second form read another tag as no trailer, as
// older ones do; so does a set in the third form there. A set whose merged
// keys' place is not known, or whose schedule the third form cannot hold,
// is written in the second form.
//
// Merged keys sit at the front of Previous, behind the farm's keys that
// encrypted since the merges began (they encrypted until the merge);
// keeping Keep+extra previous keys for Keep rotations after the merge gives
// each of them the Keep intervals that any key gets after it stops
// encrypting, without cutting short the keys behind them.
type keySet struct {
	st    ticket.State
	extra int
	until uint64
	// interval and keep are the schedule of the node that wrote the set
	// (interval 0: not known, as in a set from an older version).
	interval time.Duration
	keep     int
	// placed: every key merged in since extra was last 0 is in
	// st.Previous[at:at+extra] (the range cut to st.Previous), and no
	// other key is. Without it, a reader knows how many keys merges
	// added, not which.
	placed bool
	at     int
}

const (
	stateHeaderLen = 1 + 8 + 8 + ticket.KeyLen + ticket.KeyLen + 2
	trailerLen     = 2 + 8
	maxMergedExtra = 64 // bounds the decrypt set a merge can grow

	paramsTag      = 1
	paramsMaxDelta = 1<<10 - 1
	paramsMaxKeep  = 1<<10 - 1
	paramsMaxMS    = 1<<33 - 1

	blockTag   = 2
	blockMaxAt = 1<<10 - 1
	blockMaxS  = 1<<23 - 1
)

// mergedKeys returns the range of k.st.Previous that merges added, if k
// records it (from == to otherwise, or if there is none).
func (k keySet) mergedKeys() (from, to int) {
	if !k.placed || k.extra == 0 {
		return 0, 0
	}
	n := len(k.st.Previous)
	return min(k.at, n), min(k.at+k.extra, n)
}

// block returns the third trailer form's 8 bytes for k, if they hold it.
func (k keySet) block() (uint64, bool) {
	s := k.interval / time.Second
	from, to := k.mergedKeys()
	if from == to || k.until < k.st.Epoch || k.until-k.st.Epoch > paramsMaxDelta || k.extra > maxMergedExtra ||
		k.at > blockMaxAt || k.interval%time.Second != 0 || s <= 0 || s > blockMaxS || k.keep < 0 || k.keep > paramsMaxKeep {
		return 0, false
	}
	return blockTag<<60 | uint64(k.extra)<<53 | (k.until-k.st.Epoch)<<43 | uint64(k.keep)<<33 | uint64(k.at)<<23 | uint64(s), true
}

// params returns the second trailer form's 8 bytes for k, if they hold it.
func (k keySet) params() (uint64, bool) {
	ms := k.interval / time.Millisecond
	if k.interval <= 0 || k.interval%time.Millisecond != 0 || ms > paramsMaxMS || k.keep < 0 || k.keep > paramsMaxKeep {
		return 0, false
	}
	var extra, delta uint64
	if k.extra > 0 && k.until >= k.st.Epoch {
		if k.extra > maxMergedExtra || k.until-k.st.Epoch > paramsMaxDelta {
			return 0, false
		}
		extra, delta = uint64(k.extra), k.until-k.st.Epoch
	}
	return paramsTag<<60 | extra<<53 | delta<<43 | uint64(k.keep)<<33 | uint64(ms), true
}

func (k keySet) bytes() ([]byte, error) {
	b, err := k.st.Bytes()
	if err != nil {
		return b, err
	}
	if p, ok := k.block(); ok {
		b = binary.BigEndian.AppendUint16(b, 0)
		return binary.BigEndian.AppendUint64(b, p), nil
	}
	if p, ok := k.params(); ok {
		b = binary.BigEndian.AppendUint16(b, 0)
		return binary.BigEndian.AppendUint64(b, p), nil
	}
	if k.extra == 0 {
		return b, nil
	}
	b = binary.BigEndian.AppendUint16(b, uint16(k.extra))
	return binary.BigEndian.AppendUint64(b, k.until), nil
}

func parseKeySet(b []byte) (keySet, error) {
	if len(b) < stateHeaderLen {
		return keySet{}, errors.New("farm: key set too short")
	}
	n := int(binary.BigEndian.Uint16(b[stateHeaderLen-2:]))
	end := stateHeaderLen + n*ticket.KeyLen
	var k keySet
	var p uint64
	switch len(b) - end {
	case 0:
	case trailerLen:
		k.extra = int(binary.BigEndian.Uint16(b[end:]))
		if k.extra > 0 { // with no extra keys, until means nothing
			k.until = binary.BigEndian.Uint64(b[end+2:])
		} else {
			p = binary.BigEndian.Uint64(b[end+2:])
		}
		b = b[:end]
	default:
		return keySet{}, errors.New("farm: key set has a bad length")
	}
	st, err := ticket.ParseState(b)
	if err != nil {
		return keySet{}, err
	}
	k.st = st
	// Another tag is a form of a later version: read as no trailer.
	switch p >> 60 {
	case blockTag:
		k.extra = int(p >> 53 & 0x7f)
		k.until = st.Epoch + (p >> 43 & paramsMaxDelta)
		k.keep = int(p >> 33 & paramsMaxKeep)
		k.at = int(p >> 23 & blockMaxAt)
		k.interval = time.Duration(p&blockMaxS) * time.Second
		k.placed = true
		switch {
		case k.interval == 0:
			return keySet{}, errors.New("farm: key set has a zero rotation interval")
		case k.extra == 0 || k.extra > maxMergedExtra:
			return keySet{}, errors.New("farm: key set has a bad number of merged keys")
		case k.until < st.Epoch:
			return keySet{}, errors.New("farm: key set's merged keys last past the last epoch")
		case k.at >= len(st.Previous):
			return keySet{}, errors.New("farm: key set's merged keys are past its previous keys")
		}
	case paramsTag:
		ms := p & paramsMaxMS
		if ms == 0 {
			return keySet{}, errors.New("farm: key set has a zero rotation interval")
		}
		k.interval = time.Duration(ms) * time.Millisecond
		k.keep = int(p >> 33 & paramsMaxKeep)
		if extra := int(p >> 53 & 0x7f); extra > 0 {
			if extra > maxMergedExtra {
				return keySet{}, errors.New("farm: key set has too many merged keys")
			}
			k.extra, k.until = extra, st.Epoch+(p>>43&paramsMaxDelta)
			if k.until < st.Epoch {
				return keySet{}, errors.New("farm: key set's merged keys last past the last epoch")
			}
		}
	}
	return k, nil
}

// schedule returns the Interval and Keep that k is aged by and rotated
// with: its writer's if k carries them, else interval and keep (this
// node's).
func (k keySet) schedule(interval time.Duration, keep int) (time.Duration, int) {
	if k.interval > 0 {
		return k.interval, k.keep
	}
	return interval, keep
}

// keepFor returns how many previous keys the rotation to epoch e keeps.
func (k keySet) keepFor(e uint64, keep int) int {
	if k.extra > 0 && e <= k.until {
		return keep + k.extra
	}
	return keep
}

// aged returns the set k as it would stand at now (the store's clock) had
// the farm made every rotation due since k's Rotated, one per interval,
// without their new keys: the previous keys those rotations would have
// dropped are dropped. ok is false if they would have dropped k's current
// key too: every key of k has then rotated out of every decrypt set on
// schedule, so no ticket it encrypted still resumes on a farm that kept
// rotating. A ring that holds no farm set yet takes the stored set only
// so aged: it cannot tell a set replayed into the store from the farm's
// own, but a replayed set is older by at least one interval per rotation
// since, so no key it brings back has rotated out of the farm's sets.
// The rotations are those of the schedule k carries (its writer's Interval
// and Keep, see keySet.schedule); interval and keep, this node's, stand in
// for a set that carries none.
func aged(k keySet, now time.Time, interval time.Duration, keep int) (keySet, bool) {
	interval, keep = k.schedule(interval, keep)
	age := now.Sub(k.st.Rotated)
	if age < interval || interval <= 0 {
		return k, true
	}
	missed := age / interval
	if missed > 1<<20 {
		return k, false
	}
	j := int(missed)
	// The rotation to epoch e keeps keepFor(e) previous keys, which does
	// not grow with e: the j-th binds. After it, the current key is the
	// (j-1)th previous one, the ith previous key the (i+j)th.
	kept := k.keepFor(k.st.Epoch+uint64(j), keep)
	if j > kept {
		return k, false
	}
	if n := kept - j; n < len(k.st.Previous) {
		k.st.Previous = append([]ticket.Key(nil), k.st.Previous[:n]...)
	}
	return k, true
}

// withoutLapsed returns mine less the previous keys that the rotations due
// since mine.Rotated (at now, by the store's clock), one per interval,
// would have dropped: keys that stopped encrypting in the farm's line
// before this node last took a set, and that the farm retired on schedule
// while the node could not see it (cut off from the store and the bus). A
// merge must not bring them back: a ticket under one was refused by the
// farm already. The current key stays, whatever its age: the node
// encrypted with it until now. Merged keys the ring may hold beyond keep
// are counted as kept as long as any key (so none goes early).
func withoutLapsed(mine ticket.State, now time.Time, interval time.Duration, keep int) ticket.State {
	age := now.Sub(mine.Rotated)
	if interval <= 0 || age < interval || len(mine.Previous) == 0 {
		return mine
	}
	kept := max(keep, len(mine.Previous))
	if j := age / interval; j < time.Duration(kept) {
		kept -= int(j)
	} else {
		kept = 0
	}
	if kept < len(mine.Previous) {
		mine.Previous = mine.Previous[:kept:kept]
	}
	return mine
}

func holds(s ticket.State, key ticket.Key) bool {
	if key == s.Current || key == s.Next {
		return true
	}
	for _, p := range s.Previous {
		if p == key {
			return true
		}
	}
	return false
}

// needsMerge reports whether the farm's set farm must be merged with this
// node's set mine before this node can use it: adopting farm as it is would
// drop a key this node may have encrypted with (or, at an epoch not above
// mine, cannot be applied at all). A ring that never served (mineServed
// false, epoch 0) has encrypted nothing and simply adopts the farm's.
func needsMerge(farm, mine ticket.State, mineServed bool) bool {
	if mine.Epoch == 0 && !mineServed {
		return false
	}
	switch {
	case farm.Epoch > mine.Epoch:
		// A normal successor holds mine's current key among its previous
		// ones; mine's older keys may have lapsed on schedule.
		return !holds(farm, mine.Current)
	case farm.Epoch == mine.Epoch:
		if farm.Current != mine.Current {
			return true // two sets at one epoch: a split
		}
		for _, p := range mine.Previous {
			if !holds(farm, p) {
				return true
			}
		}
		return false
	default:
		// The store is behind this node (it lost data and was seeded by
		// a node with an older set): the node cannot apply it.
		return true
	}
}

// merge returns the farm's set farm extended with every key of mine that
// may have encrypted tickets (its current and previous keys), as
// decrypt-only keys, at an epoch above both. The farm's current and next
// keys stay: one key encrypts everywhere. The added keys go just ahead of
// those earlier merges added that are still kept, or at the front of
// Previous, and the result records where they all are if farm did.
//
// A farm's set at an epoch below mine is not built on: it may be a set the
// farm has rotated past, put back by someone who can write the store, and
// taking its keys would bring back keys that rotated out (as the one that
// encrypts, even). The result is then mine at a greater epoch, keeping
// every previous key it holds for keep rotations; a node that encrypts
// with the older set's keys finds them missing there and merges them in
// itself.
//
// The result carries the farm's schedule, which its lease holder wrote
// with it (see keySet.schedule): interval and keep, this node's, stand in
// for a farm set that carries none.
func merge(farm keySet, mine ticket.State, interval time.Duration, keep int) keySet {
	interval, keep = farm.schedule(interval, keep)
	if farm.st.Epoch < mine.Epoch {
		out := keySet{st: mine, interval: interval, keep: keep}
		out.st.Epoch = mine.Epoch + 1
		if extra := len(mine.Previous) - keep; extra > 0 {
			out.extra = min(extra, maxMergedExtra)
			out.until = out.st.Epoch + uint64(keep)
		}
		return out
	}
	out := keySet{st: farm.st, extra: farm.extra, until: farm.until, interval: interval, keep: keep, placed: farm.placed, at: farm.at}
	out.st.Epoch = max(farm.st.Epoch, mine.Epoch) + 1
	if out.st.Epoch > out.until {
		// The last merge's keys have lapsed: none is left to place.
		out.extra, out.placed, out.at = 0, false, 0
	}
	var added []ticket.Key
	for _, k := range append([]ticket.Key{mine.Current}, mine.Previous...) {
		if k == (ticket.Key{}) || holds(farm.st, k) {
			continue
		}
		dup := false
		for _, a := range added {
			dup = dup || a == k
		}
		if !dup {
			added = append(added, k)
		}
	}
	if len(added) > maxMergedExtra {
		added = added[:maxMergedExtra]
	}
	// The added keys go with the keys earlier merges added, ahead of
	// them: so all of them stay in one run, which the set records (when
	// it knows where the earlier ones are), and no key behind them lapses
	// early. Without earlier merges that is the front of Previous.
	at := 0
	if out.extra > 0 {
		at = min(out.at, len(farm.st.Previous))
	}
	prev := make([]ticket.Key, 0, len(added)+len(farm.st.Previous))
	prev = append(prev, farm.st.Previous[:at]...)
	prev = append(prev, added...)
	prev = append(prev, farm.st.Previous[at:]...)
	out.st.Previous = prev
	if len(added) > 0 {
		out.placed = out.extra == 0 || out.placed
		out.at = at
		out.extra = min(out.extra+len(added), maxMergedExtra)
		out.until = out.st.Epoch + uint64(keep)
	}
	if !out.placed {
		out.at = 0
	}
	return out
}

// successor returns the set that the lease holder writes when it rotates k
// at now, with its own schedule interval and keep: k's merged keys are
// kept until k's until, and stay recorded, one place further down.
func (k keySet) successor(now time.Time, interval time.Duration, keep int) (keySet, error) {
	kept := k.keepFor(k.st.Epoch+1, keep)
	next, err := k.st.Rotate(now, kept)
	if err != nil {
		return keySet{}, err
	}
	// Overdue by more than one interval (the store was unreachable, or no
	// node held the lease): as ticket.Ring.Run does, drop the previous
	// keys that the rotations missed would have dropped. Each stopped
	// encrypting before the current key started, and resumes no ticket
	// longer than Keep intervals after. The current key stays, whatever
	// its age: the farm encrypted with it until now.
	if missed := now.Sub(k.st.Rotated) / max(interval, 1); missed > 1 && len(next.Previous) > 1 {
		n := 1
		if missed < time.Duration(kept) {
			n += kept - int(missed)
		}
		if n < len(next.Previous) {
			clear(next.Previous[n:])
			next.Previous = next.Previous[:n:n]
		}
	}
	out := keySet{st: next, interval: interval, keep: keep}
	// Through until itself: the rotation after it drops what the merges
	// added, and until then the set says which keys those are.
	if k.extra > 0 && next.Epoch <= k.until {
		out.extra, out.until = k.extra, k.until
		if from, to := k.mergedKeys(); from < to && from+1 < len(next.Previous) {
			out.placed, out.at = true, from+1
		}
	}
	return out, nil
}
