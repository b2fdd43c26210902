package ticket

import (
	"slices"
	"testing"
)

// TestTLSKeysMergedLast: the keys a ring gives crypto/tls, which tries
// them in order on every ticket, put the keys merged in from another key
// set after the previous keys of the ring's own line, so that a ticket of
// an older farm key costs no HMAC with a merged key.
func TestTLSKeysMergedLast(t *testing.T) {
	var k [8]Key
	for i := range k {
		k[i][0], k[i][31] = byte(i+1), 0xaa
	}
	f1, f2, f3, m1, m2 := k[0], k[1], k[2], k[3], k[4]
	r, err := NewRing(RingConfig{Initial: &State{Epoch: 2, Current: f2, Next: f3, Previous: []Key{f1}}})
	if err != nil {
		t.Fatal(err)
	}
	order := func() []Key {
		var out []Key
		for _, b := range r.st.tlsKeys(r.foreign) {
			out = append(out, Key(b))
		}
		return out
	}
	if err := r.Set(State{Epoch: 3, Current: f2, Next: f3, Previous: []Key{m1, m2, f1}}); err != nil {
		t.Fatal(err)
	}
	if got, want := order(), []Key{f2, f3, f1, m1, m2}; !slices.Equal(got, want) {
		t.Errorf("after the merge: %v, want %v", got, want)
	}
	if err := r.Update(f3, m1, f1); err != nil {
		t.Fatal(err)
	}
	if got, want := order(), []Key{f3, m1, f1}; !slices.Equal(got, want) {
		t.Errorf("after Update: %v, want %v", got, want)
	}
}
