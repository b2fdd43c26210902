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
