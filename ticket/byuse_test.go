package ticket_test

import (
	"slices"
	"testing"

	"github.com/tlsfarm/tlsfarm/ticket"
)

// TestStateByUse follows a ring through the key sets a farm installs
// around a merge, and checks the order in which StateByUse gives the
// previous keys: the keys that encrypted in the ring's line first, newest
// first, then the keys merged in from the other side of a split.
//
// A farm that records which keys a merge added (Ring.SetMerged) lets a
// ring that joins after the merge, or misses its set, tell them apart too.
func TestStateByUse(t *testing.T) {
	k := newKeys(t, 12)
	f1, f2, f3, f4, f5 := k[0], k[1], k[2], k[3], k[4] // the farm's line
	m1, m2, m3 := k[5], k[6], k[7]                     // the other side's line
	own := func(cur, next ticket.Key, prev ...ticket.Key) *ticket.State {
		return &ticket.State{Epoch: 1, Current: cur, Next: next, Previous: prev}
	}
	set := func(e uint64, cur, next ticket.Key, prev ...ticket.Key) func(*ticket.Ring) error {
		return func(r *ticket.Ring) error {
			return r.Set(ticket.State{Epoch: e, Current: cur, Next: next, Previous: prev})
		}
	}
	// setMerged installs a set whose writer merged in prev[from:to].
	setMerged := func(e uint64, from, to int, cur, next ticket.Key, prev ...ticket.Key) func(*ticket.Ring) error {
		return func(r *ticket.Ring) error {
			return r.SetMerged(ticket.State{Epoch: e, Current: cur, Next: next, Previous: prev}, from, to)
		}
	}
	type step struct {
		do          func(*ticket.Ring) error
		wantPrev    []ticket.Key
		wantForeign int
	}
	for _, tc := range []struct {
		name    string
		initial *ticket.State // nil: a fresh ring
		steps   []step
	}{{
		name: "a fresh ring joins: the farm's keys are its own",
		steps: []step{
			{set(5, f2, f3, f1), []ticket.Key{f1}, 0},
		},
	}, {
		name:    "the farm's side of a merge: merged keys go last, also after rotations",
		initial: own(f1, f2),
		steps: []step{
			{set(2, f2, f3, f1), []ticket.Key{f1}, 0},
			{set(3, f2, f3, m1, m2, m3, f1), []ticket.Key{f1, m1, m2, m3}, 3},
			{set(4, f3, f4, f2, m1, m2, m3, f1), []ticket.Key{f2, f1, m1, m2, m3}, 3},
			{set(5, f4, f5, f3, f2, m1, m2, m3, f1), []ticket.Key{f3, f2, f1, m1, m2, m3}, 3},
			{set(6, f5, k[8], f4, f3), []ticket.Key{f4, f3}, 0},
		},
	}, {
		name:    "the merging side: its own keys stay first, as the merge puts them",
		initial: own(m1, m2, m3),
		steps: []step{
			{set(3, f2, f3, m1, m3, f1), []ticket.Key{m1, m3, f1}, 0},
			{set(4, f3, f4, f2, m1, m3, f1), []ticket.Key{f2, m1, m3, f1}, 0},
		},
	}, {
		name:    "after a gap in epochs a key new to the ring may be a current key it missed",
		initial: &ticket.State{Epoch: 2, Current: f2, Next: f3, Previous: []ticket.Key{f1}},
		steps: []step{
			{set(5, f5, k[8], f4, f3, f2), []ticket.Key{f4, f3, f2}, 0},
		},
	}, {
		name:    "a ring that missed the merge's set keeps the farm's order",
		initial: &ticket.State{Epoch: 2, Current: f2, Next: f3, Previous: []ticket.Key{f1}},
		steps: []step{
			{set(4, f3, f4, f2, m1, m2, f1), []ticket.Key{f2, m1, m2, f1}, 0},
		},
	}, {
		name:    "a merge the ring saw stays foreign across a later gap",
		initial: &ticket.State{Epoch: 2, Current: f2, Next: f3, Previous: []ticket.Key{f1}},
		steps: []step{
			{set(3, f2, f3, m1, f1), []ticket.Key{f1, m1}, 1},
			{set(5, f4, f5, f3, f2, m1, f1), []ticket.Key{f3, f2, f1, m1}, 1},
		},
	}, {
		name:    "the ring's own rotation keeps what it knows",
		initial: &ticket.State{Epoch: 2, Current: f2, Next: f3, Previous: []ticket.Key{f1}},
		steps: []step{
			{set(3, f2, f3, m1, f1), []ticket.Key{f1, m1}, 1},
			{func(r *ticket.Ring) error { return r.Rotate() }, []ticket.Key{f2, f1, m1}, 1},
		},
	}, {
		name:    "Update gives the order of use",
		initial: &ticket.State{Epoch: 2, Current: f2, Next: f3, Previous: []ticket.Key{f1}},
		steps: []step{
			{set(3, f2, f3, m1, f1), []ticket.Key{f1, m1}, 1},
			{func(r *ticket.Ring) error { return r.Update(f3, m1, f1) }, []ticket.Key{m1, f1}, 0},
		},
	}, {
		name:    "a set sharing no key with the one before is the ring's line",
		initial: &ticket.State{Epoch: 2, Current: f2, Next: f3, Previous: []ticket.Key{f1}},
		steps: []step{
			{set(3, f2, f3, m1, f1), []ticket.Key{f1, m1}, 1},
			{set(4, m2, m3, k[9], k[10]), []ticket.Key{k[9], k[10]}, 0},
		},
	}, {
		name: "a fresh ring joins after a merge the farm records",
		steps: []step{
			{setMerged(4, 1, 4, f3, f4, f2, m1, m2, m3, f1), []ticket.Key{f2, f1, m1, m2, m3}, 3},
			{setMerged(5, 2, 5, f4, f5, f3, f2, m1, m2, m3, f1), []ticket.Key{f3, f2, f1, m1, m2, m3}, 3},
		},
	}, {
		name:    "a ring that missed the merge's set, when the farm records it",
		initial: &ticket.State{Epoch: 2, Current: f2, Next: f3, Previous: []ticket.Key{f1}},
		steps: []step{
			{setMerged(4, 1, 3, f3, f4, f2, m1, m2, f1), []ticket.Key{f2, f1, m1, m2}, 2},
		},
	}, {
		name:    "the merging side: the record does not make its own keys foreign",
		initial: own(m1, m2, m3),
		steps: []step{
			{setMerged(3, 0, 2, f2, f3, m1, m3, f1), []ticket.Key{m1, m3, f1}, 0},
			{setMerged(4, 1, 3, f3, f4, f2, m1, m3, f1), []ticket.Key{f2, m1, m3, f1}, 0},
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := ticket.NewRing(ticket.RingConfig{Keep: 10, Initial: tc.initial})
			if err != nil {
				t.Fatal(err)
			}
			for i, s := range tc.steps {
				if err := s.do(r); err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				st, foreign := r.StateByUse()
				plain := r.State()
				if !slices.Equal(st.Previous, s.wantPrev) || foreign != s.wantForeign {
					t.Errorf("step %d: previous %v, %d foreign; want %v, %d", i, st.Previous, foreign, s.wantPrev, s.wantForeign)
				}
				// Only the order differs from State.
				if st.Epoch != plain.Epoch || st.Current != plain.Current || st.Next != plain.Next ||
					len(st.Previous) != len(plain.Previous) {
					t.Errorf("step %d: StateByUse %v differs from State %v beyond the order", i, st, plain)
				}
				for _, k := range plain.Previous {
					if !slices.Contains(st.Previous, k) {
						t.Errorf("step %d: StateByUse lost %v", i, k)
					}
				}
			}
		})
	}
}

// TestSetMergedRange: SetMerged refuses a range that is not one of the
// set's previous keys, and changes nothing then.
func TestSetMergedRange(t *testing.T) {
	k := newKeys(t, 4)
	r, err := ticket.NewRing(ticket.RingConfig{})
	if err != nil {
		t.Fatal(err)
	}
	s := ticket.State{Epoch: 3, Current: k[0], Next: k[1], Previous: []ticket.Key{k[2], k[3]}}
	for _, rg := range [][2]int{{-1, 1}, {2, 1}, {0, 3}, {3, 3}} {
		if err := r.SetMerged(s, rg[0], rg[1]); err == nil {
			t.Errorf("SetMerged accepted the range [%d:%d] of 2 previous keys", rg[0], rg[1])
		}
	}
	if r.State().Epoch != 0 {
		t.Fatal("a refused SetMerged changed the ring")
	}
	if err := r.SetMerged(s, 2, 2); err != nil {
		t.Fatal(err)
	}
}
