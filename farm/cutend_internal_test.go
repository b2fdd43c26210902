package farm

import (
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// TestResumedKeepsEarliestCutEnd: the memory of IDs resumed lately keeps
// with each the earliest end of a grace cut heard of it (a later one, or
// one heard again later, does not lengthen it), through a change of
// generation, for as long as it keeps the ID; a stranger has none, and past
// its bound it does not make one up (the loader then cuts nothing).
func TestResumedKeepsEarliestCutEnd(t *testing.T) {
	cache, err := session.New(&session.Config{SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	const ttl = 10 * time.Second
	w := newEndMemory(4, ttl)
	now := time.Unix(1_000_000, 0)
	a, b, stranger := cache.NewID(), cache.NewID(), cache.NewID()
	soon := now.Add(5 * time.Second)
	w.addEnd(a, now, now.Add(400*time.Millisecond))
	w.addEnd(a, now.Add(100*time.Millisecond), now.Add(500*time.Millisecond)) // resumed again: its cut ends later
	w.addEnd(b, soon, soon.Add(time.Second))
	w.addEnd(b, soon.Add(50*time.Millisecond), soon.Add(300*time.Millisecond)) // an earlier cut heard later
	check := func(what string, at time.Time, id session.ID, want time.Time, wantOK bool) {
		t.Helper()
		got, ok := w.end(id, at)
		if ok != wantOK || ok && !got.Equal(want) {
			t.Errorf("%s: end %v, %v; want %v, %v", what, got.Sub(now), ok, want.Sub(now), wantOK)
		}
	}
	check("a", soon, a, now.Add(400*time.Millisecond), true)
	check("b", soon, b, soon.Add(300*time.Millisecond), true)
	check("a stranger", soon, stranger, time.Time{}, false)

	// A new generation begins: b is in the older one, and b heard again
	// goes to the newer one with its earliest end; a lapsed, and a cut
	// heard of it now is all there is.
	later := now.Add(ttl + time.Second)
	check("a lapsed", later, a, time.Time{}, false)
	w.addEnd(a, later, later.Add(time.Second))
	check("a heard again after it lapsed", later, a, later.Add(time.Second), true)
	check("b in the older generation", later, b, soon.Add(300*time.Millisecond), true)
	w.addEnd(b, later, later.Add(time.Second))
	check("b in the newer generation", later, b, soon.Add(300*time.Millisecond), true)

	// Past the bound the older generation goes: b's end is not made up.
	for range 4 {
		w.addEnd(cache.NewID(), later, later.Add(time.Second))
	}
	if over, _ := w.overflow(later); !over {
		t.Fatal("the memory did not go past its bound")
	}
	check("b forgotten past the bound", later, b, time.Time{}, false)
	check("a stranger past the bound", later, stranger, time.Time{}, false)
}

// TestEndMemoryCases: the memory of IDs resumed lately keeps with each ID
// the earliest end added with it while the ID is remembered, and carries
// it into the newer generation when the ID is added again; an ID lapsed
// carries nothing, and past the bound the IDs forgotten have no end
// (has still answers "maybe" for them, and for strangers).
func TestEndMemoryCases(t *testing.T) {
	const ttl = 10 * time.Second
	type add struct {
		id      byte
		at, end time.Duration // after the start
	}
	type check struct {
		id      byte
		at, end time.Duration
		ok, has bool
	}
	ms := time.Millisecond
	for _, tc := range []struct {
		name   string
		max    int
		adds   []add
		checks []check
	}{
		{"earliest of one generation", 8,
			[]add{{'a', 0, 5 * time.Second}, {'a', time.Second, 9 * time.Second}, {'a', 2 * time.Second, 3 * time.Second}},
			[]check{{'a', 3 * time.Second, 3 * time.Second, true, true}, {'s', 3 * time.Second, 0, false, false}}},
		{"the older generation's end, carried into the newer", 8,
			// x starts the generation at 0; a, added at 8s, is in the
			// older one at 11s and within ttl; added again it keeps its
			// earlier end, then past 18s as well.
			[]add{{'x', 0, time.Second}, {'a', 8 * time.Second, 30 * time.Second}, {'a', 11 * time.Second, 40 * time.Second}},
			[]check{{'a', 12 * time.Second, 30 * time.Second, true, true}, {'a', 20 * time.Second, 30 * time.Second, true, true},
				{'a', 21 * time.Second, 0, false, false}}},
		{"an earlier end heard in the newer generation", 8,
			[]add{{'x', 0, time.Second}, {'a', 8 * time.Second, 30 * time.Second}, {'a', 11 * time.Second, 15 * time.Second}},
			[]check{{'a', 12 * time.Second, 15 * time.Second, true, true}}},
		{"the older generation's end, not added again", 8,
			[]add{{'x', 0, time.Second}, {'a', 8 * time.Second, 30 * time.Second}, {'b', 11 * time.Second, 40 * time.Second}},
			[]check{{'a', 17 * time.Second, 30 * time.Second, true, true}, {'a', 18 * time.Second, 0, false, false},
				{'b', 18 * time.Second, 40 * time.Second, true, true}}},
		{"lapsed: its end is not carried", 8,
			[]add{{'a', 0, 30 * time.Second}, {'a', ttl, 40 * time.Second}},
			[]check{{'a', ttl, 40 * time.Second, true, true}}},
		{"kept for ttl after its addition", 8,
			[]add{{'a', 0, 5 * time.Second}},
			[]check{{'a', ttl - ms, 5 * time.Second, true, true}, {'a', ttl, 0, false, false}}},
		{"past the bound, the older generation forgotten", 4,
			// x, a in the older generation; b, c in the newer; d goes
			// past the bound: x and a are forgotten, with their ends.
			[]add{{'x', 0, time.Second}, {'a', 5 * time.Second, 20 * time.Second}, {'b', ttl, 30 * time.Second}, {'c', ttl, 30 * time.Second},
				{'d', 11 * time.Second, 35 * time.Second}},
			[]check{{'a', 11 * time.Second, 0, false, true}, {'s', 11 * time.Second, 0, false, true},
				{'b', 11 * time.Second, 30 * time.Second, true, true}, {'d', 11 * time.Second, 35 * time.Second, true, true},
				{'d', 20 * time.Second, 35 * time.Second, true, true}, {'s', 21 * time.Second, 0, false, false}}},
		{"past the bound, a forgotten ID added again", 4,
			[]add{{'a', 0, 5 * time.Second}, {'b', 0, time.Second}, {'c', 0, time.Second}, {'d', 0, time.Second},
				{'e', time.Second, time.Second}, {'a', time.Second, 8 * time.Second}},
			[]check{{'a', 2 * time.Second, 8 * time.Second, true, true}, {'b', 2 * time.Second, 0, false, true},
				{'e', 2 * time.Second, time.Second, true, true}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Unix(1_000_000, 0)
			id := func(b byte) session.ID {
				var id session.ID
				id[2] = b
				return id
			}
			w := newEndMemory(tc.max, ttl)
			for _, a := range tc.adds {
				w.addEnd(id(a.id), start.Add(a.at), start.Add(a.end))
			}
			for _, c := range tc.checks {
				at := start.Add(c.at)
				end, ok := w.end(id(c.id), at)
				if ok != c.ok || ok && !end.Equal(start.Add(c.end)) {
					t.Errorf("%c at %v: end %v, %v; want %v, %v", c.id, c.at, end.Sub(start), ok, c.end, c.ok)
				}
				if has := w.has(id(c.id), at); has != c.has {
					t.Errorf("%c at %v: has %v, want %v", c.id, c.at, has, c.has)
				}
			}
		})
	}
}
