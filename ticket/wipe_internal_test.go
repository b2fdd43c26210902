package ticket

import (
	"slices"
	"testing"
)

// TestDroppedKeysAreWiped looks inside the ring: once a key leaves the key
// set, every copy the ring held of it (in the State it replaced, including
// that State's Previous array) reads as zeros.
func TestDroppedKeysAreWiped(t *testing.T) {
	for _, keep := range []int{1, 2, 3} {
		r, err := NewRing(RingConfig{Keep: keep})
		if err != nil {
			t.Fatal(err)
		}
		var held []*State // every State the ring has used, as the ring holds it
		held = append(held, r.st)
		var arrays [][]Key // their Previous arrays, aliased
		watch := func() {
			held = append(held, r.st)
			arrays = append(arrays, r.st.Previous)
		}
		first := r.st.Current
		for range keep + 1 {
			if err := r.Rotate(); err != nil {
				t.Fatal(err)
			}
			watch()
		}
		// first has left the key set: it is nowhere in the ring.
		if slices.Contains(r.st.Keys(), first) {
			t.Fatalf("keep=%d: %v still in the key set after %d rotations", keep, first, keep+1)
		}
		for i, st := range held[:len(held)-1] {
			if st.Current != (Key{}) || st.Next != (Key{}) || st.Previous != nil {
				t.Errorf("keep=%d: replaced State %d not wiped: %+v", keep, i, st)
			}
		}
		for i, a := range arrays[:len(arrays)-1] {
			for j, k := range a {
				if k != (Key{}) {
					t.Errorf("keep=%d: Previous array %d holds a key at %d after it was replaced", keep, i, j)
				}
			}
		}

		// Update and Set wipe the key set they replace too.
		before, arr := r.st, r.st.Previous
		ks := make([]Key, 2)
		for i := range ks {
			if ks[i], err = NewKey(); err != nil {
				t.Fatal(err)
			}
		}
		if err := r.Update(ks...); err != nil {
			t.Fatal(err)
		}
		if before.Current != (Key{}) || slices.ContainsFunc(arr, func(k Key) bool { return k != (Key{}) }) {
			t.Errorf("keep=%d: Update left the replaced keys in place", keep)
		}
		before = r.st
		if err := r.Set(State{Epoch: r.st.Epoch + 1, Current: ks[1]}); err != nil {
			t.Fatal(err)
		}
		if before.Current != (Key{}) || before.Previous != nil {
			t.Errorf("keep=%d: Set left the replaced keys in place: %+v", keep, before)
		}
		if ks[0] == (Key{}) {
			t.Errorf("keep=%d: the ring wiped the caller's keys", keep)
		}
	}
}

// TestParseStateFailureWipes checks that a rejected encoding leaves no keys in
// the State it returns.
func TestParseStateFailureWipes(t *testing.T) {
	k, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	b, err := State{Current: k, Previous: []Key{{1}}}.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	copy(b[len(b)-KeyLen:], make([]byte, KeyLen)) // previous[0] := zero key
	s, err := ParseState(b)
	if err == nil {
		t.Fatal("ParseState accepted a zero previous key")
	}
	if s.Current != (Key{}) || s.Previous != nil {
		t.Fatalf("ParseState returned keys with its error: %+v", s)
	}
}
