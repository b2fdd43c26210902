package farm

import (
	"bytes"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/ticket"
)

// FuzzParseKeySet checks that parseKeySet never panics on a stored or
// announced key set (after the seal opens, its bytes are the writer's, but
// a writer of another version may send any trailer), that what it accepts
// is usable (mergedKeys, aged, merge and successor run on it), and that it
// reads back the same from its own encoding.
func FuzzParseKeySet(f *testing.F) {
	key := func(b byte) ticket.Key {
		var k ticket.Key
		for i := range k {
			k[i] = b + byte(i)
		}
		return k
	}
	st := ticket.State{Epoch: 7, Current: key(1), Next: key(2), Previous: []ticket.Key{key(3), key(4), key(5)}, Rotated: time.Unix(1700000000, 0)}
	for _, k := range []keySet{
		{st: st},
		{st: st, extra: 2, until: 9},
		{st: st, interval: time.Hour, keep: 2},
		{st: st, extra: 2, until: 9, interval: time.Hour, keep: 2, placed: true, at: 1},
		{st: st, extra: 1, until: 3},
	} {
		b, err := k.bytes()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := parseKeySet(b)
		if err != nil {
			return
		}
		from, to := k.mergedKeys()
		if from < 0 || from > to || to > len(k.st.Previous) {
			t.Fatalf("mergedKeys [%d:%d] of %d previous keys", from, to, len(k.st.Previous))
		}
		now := k.st.Rotated.Add(3 * time.Hour)
		aged(k, now, time.Hour, 2)
		merge(k, ticket.State{Epoch: 1, Current: key(200), Previous: []ticket.Key{key(201)}}, time.Hour, 2)
		if k.st.Epoch < 1<<62 {
			if _, err := k.successor(now, time.Hour, 2); err != nil {
				t.Fatalf("successor: %v", err)
			}
		}
		out, err := k.bytes()
		if err != nil {
			t.Fatalf("bytes of a parsed key set: %v", err)
		}
		back, err := parseKeySet(out)
		if err != nil {
			t.Fatalf("a parsed key set does not parse again from its own bytes: %v", err)
		}
		out2, _ := back.bytes()
		if !bytes.Equal(out, out2) {
			t.Fatalf("encoding not stable:\n%x\n%x", out, out2)
		}
	})
}
