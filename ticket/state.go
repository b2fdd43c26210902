package ticket

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"
)

// A State is a complete key set: the keys a [Ring] applies to its configs, the
// time the encrypting key took over, and an epoch that orders key sets. It is
// what a farm distributes so that every server holds the same keys; see
// [Ring.Set].
//
// A State holds key bytes. Printing or logging it shows only fingerprints (see
// [Key]), but [State.Bytes] returns the keys in the clear: seal that encoding
// before it leaves the process.
type State struct {
	// Epoch orders key sets: Ring.Set accepts a State only if its Epoch is
	// greater than that of the key set in use. Ring.Rotate, Ring.Update and
	// State.Rotate each add one. A ring made by NewRing without an initial
	// State starts at epoch 0.
	Epoch uint64

	// Current is the key that encrypts new tickets. It must not be zero.
	Current Key

	// Next is the pre-staged key: it decrypts tickets now and becomes Current
	// at the next rotation. The zero Key means no key is staged (after
	// Ring.Update, for example).
	Next Key

	// Previous holds keys that encrypted before Current, newest first. They
	// only decrypt.
	Previous []Key

	// Rotated is when Current started encrypting. A Ring running Run rotates
	// once Interval has passed since Rotated. The zero Time means "now" to
	// Ring.Set and NewRing.
	Rotated time.Time
}

// Keys returns the keys s applies to a [tls.Config], in the order crypto/tls
// tries them: Current (which also encrypts), then Next if one is staged, then
// Previous. The slice is a copy.
func (s State) Keys() []Key {
	keys := make([]Key, 0, 2+len(s.Previous))
	keys = append(keys, s.Current)
	if !s.Next.isZero() {
		keys = append(keys, s.Next)
	}
	return append(keys, s.Previous...)
}

// Rotate returns the State that follows s: s.Next becomes Current, a fresh
// random key is staged as Next, and s.Current becomes the newest previous key.
// The result keeps at most keep previous keys (none if keep is not positive),
// has an Epoch one greater than s and was rotated at now. If s has no staged
// key, a fresh key becomes Current instead; such a rotation was not announced
// a period ahead.
//
// Rotate does not change s, and the result shares no memory with it. A farm
// uses it to compute the next key set, publish it, and only then install it
// everywhere with [Ring.Set]; [Ring.Rotate] does the same for a single ring.
func (s State) Rotate(now time.Time, keep int) (State, error) {
	if err := s.validate(); err != nil {
		return State{}, err
	}
	if s.Epoch == math.MaxUint64 {
		return State{}, errors.New("ticket: epoch cannot grow past its maximum")
	}
	next, err := NewKey()
	if err != nil {
		return State{}, err
	}
	cur := s.Next
	if cur.isZero() {
		if cur, err = NewKey(); err != nil {
			return State{}, err
		}
	}
	var prev []Key
	if keep > 0 {
		prev = make([]Key, 0, min(keep, 1+len(s.Previous)))
		prev = append(prev, s.Current)
		prev = append(prev, s.Previous[:min(len(s.Previous), keep-1)]...)
	}
	return State{Epoch: s.Epoch + 1, Current: cur, Next: next, Previous: prev, Rotated: now}, nil
}

// clone returns a copy of s that shares no memory with it.
func (s State) clone() State {
	s.Previous = slices.Clone(s.Previous)
	return s
}

// wipe overwrites every key s holds with zeros.
func (s *State) wipe() {
	clear(s.Previous)
	s.Previous = nil
	s.Current = Key{}
	s.Next = Key{}
}

// tlsKeys returns s.Keys in the form SetSessionTicketKeys takes, with the
// previous keys flagged in foreign (see Ring.StateByUse) last: crypto/tls
// tries the keys in order, so a ticket of a key that encrypted in the
// ring's line costs no HMAC with a merged key. foreign may be nil. The
// caller should clear the result once it has been applied.
func (s *State) tlsKeys(foreign []bool) [][32]byte {
	keys := make([][32]byte, 0, 2+len(s.Previous))
	keys = append(keys, s.Current)
	if !s.Next.isZero() {
		keys = append(keys, s.Next)
	}
	for i, k := range s.Previous {
		if i >= len(foreign) || !foreign[i] {
			keys = append(keys, k)
		}
	}
	for i, k := range s.Previous {
		if i < len(foreign) && foreign[i] {
			keys = append(keys, k)
		}
	}
	return keys
}

// validate reports whether s is a usable key set: Current is set and no key is
// zero (Next excepted) or appears twice.
func (s State) validate() error {
	names := make([]string, 0, 2+len(s.Previous))
	keys := make([]Key, 0, 2+len(s.Previous))
	names = append(names, "State.Current")
	keys = append(keys, s.Current)
	if !s.Next.isZero() {
		names = append(names, "State.Next")
		keys = append(keys, s.Next)
	}
	for i, k := range s.Previous {
		names = append(names, "State.Previous["+strconv.Itoa(i)+"]")
		keys = append(keys, k)
	}
	return checkKeys(names, keys)
}

// checkKeys reports the first key that is zero or repeats an earlier one,
// naming keys by names[i]. The error text shows fingerprints only.
func checkKeys(names []string, keys []Key) error {
	seen := make(map[Key]int, len(keys))
	defer clear(seen)
	for i, k := range keys {
		if k.isZero() {
			return fmt.Errorf("ticket: %s is the all-zero key", names[i])
		}
		if j, dup := seen[k]; dup {
			return fmt.Errorf("ticket: %s is the same key as %s (%v)", names[i], names[j], k)
		}
		seen[k] = i
	}
	return nil
}
