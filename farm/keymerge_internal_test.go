package farm

import (
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/ticket"
)

func newState(t *testing.T, epoch uint64, prev int) ticket.State {
	t.Helper()
	s := ticket.State{Epoch: epoch, Rotated: time.Unix(1000, 0)}
	var err error
	if s.Current, err = ticket.NewKey(); err != nil {
		t.Fatal(err)
	}
	if s.Next, err = ticket.NewKey(); err != nil {
		t.Fatal(err)
	}
	for range prev {
		k, _ := ticket.NewKey()
		s.Previous = append(s.Previous, k)
	}
	return s
}

func TestNeedsMerge(t *testing.T) {
	a := newState(t, 5, 2)
	rotated, err := a.Rotate(time.Unix(2000, 0), 2)
	if err != nil {
		t.Fatal(err)
	}
	other := newState(t, 5, 2)
	fresh := newState(t, 0, 0)
	for _, tc := range []struct {
		name       string
		farm, mine ticket.State
		served     bool
		want       bool
	}{
		{"same set", a, a, false, false},
		{"normal successor", rotated, a, false, false},
		{"two sets at one epoch", other, a, false, true},
		{"newer set without my current key", newState(t, 9, 2), a, false, true},
		{"store behind me", newState(t, 1, 0), a, false, true},
		{"fresh ring that never served adopts", a, fresh, false, false},
		{"fresh ring that served merges", a, fresh, true, true},
	} {
		if got := needsMerge(tc.farm, tc.mine, tc.served); got != tc.want {
			t.Errorf("%s: needsMerge = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestMergeKeepsEveryKey merges two different sets at one epoch: one key
// encrypts, every key either side may have encrypted with decrypts, the
// epoch is above both, and the merged keys survive the next Keep
// rotations.
func TestMergeKeepsEveryKey(t *testing.T) {
	const keep = 2
	farm := keySet{st: newState(t, 7, 2)}
	mine := newState(t, 7, 2)
	m := merge(farm, mine, time.Hour, keep)
	if m.st.Epoch != 8 || m.st.Current != farm.st.Current || m.st.Next != farm.st.Next {
		t.Fatalf("merged set: epoch %d, current/next changed: %v", m.st.Epoch, m.st)
	}
	for _, k := range append([]ticket.Key{mine.Current, farm.st.Current}, append(mine.Previous, farm.st.Previous...)...) {
		if !holds(m.st, k) {
			t.Fatalf("merged set lacks key %v", k)
		}
	}
	b, err := m.bytes()
	if err != nil {
		t.Fatal(err)
	}
	back, err := parseKeySet(b)
	if err != nil || back.extra != m.extra || back.until != m.until || back.st.Epoch != m.st.Epoch {
		t.Fatalf("round trip: %+v, %v", back, err)
	}
	// Rotate as the lease holder does: mine's current key (which encrypted
	// until the merge) must decrypt for keep rotations after it.
	cur := m
	for i := 1; i <= keep; i++ {
		next, err := cur.successor(time.Unix(int64(3000+i), 0), time.Hour, keep)
		if err != nil {
			t.Fatal(err)
		}
		cur = next
		if !holds(cur.st, mine.Current) {
			t.Fatalf("rotation %d after the merge dropped a merged key", i)
		}
		if i == 1 && !holds(cur.st, farm.st.Previous[0]) {
			t.Fatalf("rotation 1 after the merge dropped the farm's newest previous key early")
		}
	}
	next, _ := cur.st.Rotate(time.Unix(4000, 0), cur.keepFor(cur.st.Epoch+1, keep))
	if len(next.Previous) != keep {
		t.Fatalf("%d previous keys %d rotations after the merge, want %d", len(next.Previous), keep+1, keep)
	}
}

// TestAnnouncementBeforeRevocations: a node that has not read the farm's
// revocations takes none of the farm's ticket keys (see Join), not even
// from an announcement that reaches it before its rotator's first poll.
func TestAnnouncementBeforeRevocations(t *testing.T) {
	ring, err := ticket.NewRing(ticket.RingConfig{})
	if err != nil {
		t.Fatal(err)
	}
	r := &Rotator{n: &Node{cfg: Config{Now: time.Now}}, cfg: RotationConfig{Ring: ring, Keep: 2}, wake: make(chan struct{}, 1)}
	st := newState(t, 3, 1)
	body, err := keySet{st: st}.bytes()
	if err != nil {
		t.Fatal(err)
	}
	r.onAnnounce(header{}, body) // clears body
	if st := ring.State(); st.Epoch != 0 {
		t.Fatalf("took the announced key set (epoch %d) before the revocations were read", st.Epoch)
	}
	r.n.revsKnown.Store(true)
	body, _ = keySet{st: st}.bytes()
	r.onAnnounce(header{}, body)
	if st := ring.State(); st.Epoch != 3 {
		t.Fatalf("epoch %d once the revocations are known, want 3", st.Epoch)
	}
}

// TestAged: a stored set, aged by the rotations due since it was written
// (one per interval), loses the previous keys those rotations would have
// dropped, and is stale once they would have dropped its current key;
// a merged set's extra keys count while its trailer says so.
func TestAged(t *testing.T) {
	const keep = 2
	iv := time.Second
	st := newState(t, 10, keep)
	for _, tc := range []struct {
		name      string
		ks        keySet
		age       time.Duration
		wantPrev  int
		wantStale bool
	}{
		{name: "fresh", ks: keySet{st: st}, age: iv / 2, wantPrev: 2},
		{name: "written in the future", ks: keySet{st: st}, age: -time.Hour, wantPrev: 2},
		{name: "one rotation due", ks: keySet{st: st}, age: iv + iv/2, wantPrev: 1},
		{name: "keep rotations due", ks: keySet{st: st}, age: keep * iv, wantPrev: 0},
		{name: "keep+1 rotations due", ks: keySet{st: st}, age: (keep + 1) * iv, wantStale: true},
		{name: "years", ks: keySet{st: st}, age: 100 * 365 * 24 * time.Hour, wantStale: true},
		{name: "merged, extra kept", ks: keySet{st: newState(t, 10, keep+3), extra: 3, until: 13}, age: 3 * iv, wantPrev: 2},
		{name: "merged, past its until", ks: keySet{st: newState(t, 10, keep+3), extra: 3, until: 11}, age: 3 * iv, wantStale: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := tc.ks.st.Previous
			got, ok := aged(tc.ks, tc.ks.st.Rotated.Add(tc.age), iv, keep)
			if ok == tc.wantStale {
				t.Fatalf("ok = %v, want %v", ok, !tc.wantStale)
			}
			if !ok {
				return
			}
			if len(got.st.Previous) != tc.wantPrev || got.st.Current != tc.ks.st.Current || got.st.Next != tc.ks.st.Next {
				t.Fatalf("%d previous keys (current kept %v), want %d", len(got.st.Previous), got.st.Current == tc.ks.st.Current, tc.wantPrev)
			}
			for i, k := range got.st.Previous {
				if k != before[i] {
					t.Fatalf("previous key %d changed", i)
				}
			}
			if len(tc.ks.st.Previous) != len(before) {
				t.Fatal("aged changed its argument")
			}
		})
	}
}
