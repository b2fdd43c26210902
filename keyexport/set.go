package keyexport

import (
	"errors"
	"strconv"
	"time"

	"github.com/tlsfarm/tlsfarm/ticket"
)

// A Role says what a key of a Set is for.
type Role string

// The roles of a Set's keys.
const (
	Current  Role = "current"  // encrypts new tickets, and decrypts
	Next     Role = "next"     // pre-staged: decrypts now, encrypts after the next rotation
	Previous Role = "previous" // encrypted before Current; decrypts until it ages out
	Filler   Role = "filler"   // pads a set to the size its format needs; no ticket uses it
)

// A SetKey is one farm key of a Set with its role and its validity.
type SetKey struct {
	Role Role       // what the key is for
	Key  ticket.Key // the farm key; targets derive their own keys from it

	// EncryptsFrom and EncryptsUntil bound the time the key encrypts new
	// tickets (zero for a Filler). DecryptsUntil is when the farm drops it.
	EncryptsFrom, EncryptsUntil, DecryptsUntil time.Time
}

// A Set is a farm key set ready to export: the farm's keys in the order of
// their use (Current, then Next, then Previous newest first) with the times
// they are valid. Previous keys merged in from another key set after a split
// (see ticket.Ring.StateByUse), which never encrypted in this farm's line,
// come last, so that a target that holds a fixed number of keys keeps the
// keys its own server encrypted with.
type Set struct {
	Epoch    uint64        // the farm key set's epoch (ticket.State)
	Rotated  time.Time     // when Current started encrypting
	Interval time.Duration // the farm's rotation interval
	Keep     int           // previous keys the farm keeps
	Keys     []SetKey      // Current, Next (if staged), Previous newest first, merged keys last
}

// newSet returns the Set of the farm key set s, rotated every interval and
// keeping keep previous keys, whose last foreign previous keys are keys
// merged in from another key set (ticket.Ring.StateByUse). The Set holds
// copies of the keys.
//
// The times of a previous key follow from its place among the farm's own
// previous keys. A merged key never encrypted in the farm's line: its
// EncryptsFrom and EncryptsUntil are zero, and its DecryptsUntil is keep
// intervals after Rotated (a merge keeps such keys for keep rotations).
func newSet(s ticket.State, foreign int, interval time.Duration, keep int) (*Set, error) {
	if s.Epoch == 0 {
		return nil, errors.New("keyexport: epoch 0 is a node's own key set, not the farm's")
	}
	if interval <= 0 {
		return nil, errors.New("keyexport: the rotation interval must be positive")
	}
	var zero ticket.Key
	if s.Current == zero {
		return nil, errors.New("keyexport: the key set has no current key")
	}
	r := s.Rotated
	set := &Set{Epoch: s.Epoch, Rotated: r, Interval: interval, Keep: keep}
	at := func(n int) time.Time { return r.Add(time.Duration(n) * interval) }
	set.Keys = append(set.Keys, SetKey{Role: Current, Key: s.Current, EncryptsFrom: r, EncryptsUntil: at(1), DecryptsUntil: at(keep + 1)})
	if s.Next != zero {
		set.Keys = append(set.Keys, SetKey{Role: Next, Key: s.Next, EncryptsFrom: at(1), EncryptsUntil: at(2), DecryptsUntil: at(keep + 2)})
	}
	if foreign < 0 || foreign > len(s.Previous) {
		return nil, errors.New("keyexport: more merged keys than previous keys")
	}
	own := len(s.Previous) - foreign
	for i, k := range s.Previous {
		if i >= own {
			set.Keys = append(set.Keys, SetKey{Role: Previous, Key: k, DecryptsUntil: at(keep)})
			continue
		}
		set.Keys = append(set.Keys, SetKey{Role: Previous, Key: k, EncryptsFrom: at(-i - 1), EncryptsUntil: at(-i), DecryptsUntil: at(keep - i)})
	}
	return set, nil
}

// wipe overwrites the Set's keys with zeros.
func (s *Set) wipe() {
	for i := range s.Keys {
		s.Keys[i].Key = ticket.Key{}
	}
}

// current returns the Set's current key.
func (s *Set) current() SetKey { return s.Keys[0] }

// byRole returns copies of the Set's keys with role r, in the Set's order.
// The caller wipes the slice after use.
func (s *Set) byRole(r Role) []SetKey {
	var out []SetKey
	for _, k := range s.Keys {
		if k.Role == r {
			out = append(out, k)
		}
	}
	if keyCopies != nil && out != nil {
		keyCopies(out)
	}
	return out
}

// filler returns the i-th filler key of the Set: a key derived from the
// current key that no node ever encrypts with, for formats that need more
// keys than the farm has yet (a new farm has no previous keys).
func (s *Set) filler(i int) ticket.Key {
	return ticket.Key(derive(s.current().Key, "filler", strconv.Itoa(i), 32))
}

// keyCopies, if set (by tests), sees each copy of farm keys that this
// package makes and must wipe after use: a []ticket.Key or a *ticket.State.
var keyCopies func(any)
