package session

import (
	"bytes"
	"strings"
	"testing"
)

// TestBoundNameIs checks boundNameIs against strings.EqualFold, which it
// replaces in the check of a stateless ticket's server name.
func TestBoundNameIs(t *testing.T) {
	names := []string{"", "a.example", "A.Example", "b.example", "a.exampl", "a.example.",
		"\u212a.example", "k.example", "K.EXAMPLE", "é.example", "É.example", "xn--e-9ba.example"}
	for _, bound := range names {
		for _, sni := range names {
			stored := []byte(strings.ToLower(bound))
			if got, want := boundNameIs(stored, sni), strings.EqualFold(string(stored), sni); got != want {
				t.Errorf("boundNameIs(%q, %q) = %t, want %t", stored, sni, got, want)
			}
		}
	}
}

// TestBindingRoundTrip checks that a binding built in the scratch room, or
// beyond it for a long server name, reads back as written.
func TestBindingRoundTrip(t *testing.T) {
	var sc ticketScratch
	for _, name := range []string{"a.example", strings.Repeat("long-", 20) + "example", "Mixed.Example"} {
		for _, fallback := range []bool{false, true} {
			b := sc.buf(bindingCap(name))
			if fallback {
				b = appendFallbackBinding(b, name, 7, 100, 200, 300)
			} else {
				b = appendBinding(b, name, 7, 100, 200)
			}
			if len(b) > len(sc.bind) && &b[0] == &sc.bind[0] {
				t.Fatalf("%q: a binding longer than the scratch room was written into it", name)
			}
			got, chain, start, issued, expires, ok := findBinding([][]byte{[]byte("other"), b})
			wantExp := int64(0)
			if fallback {
				wantExp = 300
			}
			if !ok || string(got) != strings.ToLower(name) || chain != 7 || start != 100 || issued != 200 || expires != wantExp {
				t.Fatalf("%q fallback=%t: got %q %d %d %d %d %t", name, fallback, got, chain, start, issued, expires, ok)
			}
		}
	}
}

// FuzzFindBinding checks the decoder of a stateless ticket's binding (its
// Extra entries): no panic, the entries are left as they were, and what it
// finds reads back the same from its own encoding.
func FuzzFindBinding(f *testing.F) {
	f.Add(appendBinding(nil, "a.example", 7, 100, 200))
	f.Add(appendFallbackBinding(nil, "b.example", 7, 100, 200, 300))
	f.Add(append([]byte(nil), fallbackTag...))
	f.Fuzz(func(t *testing.T, x []byte) {
		before := bytes.Clone(x)
		name, chain, start, issued, expires, ok := findBinding([][]byte{[]byte("other"), x})
		if !bytes.Equal(x, before) {
			t.Fatalf("findBinding changed its input: %x -> %x", before, x)
		}
		if !ok {
			return
		}
		var b []byte
		if expires != 0 {
			b = appendFallbackBinding(nil, string(name), chain, start, issued, expires)
		} else {
			b = appendBinding(nil, string(name), chain, start, issued)
		}
		name2, chain2, start2, issued2, expires2, ok2 := findBinding([][]byte{b})
		if !ok2 || string(name2) != strings.ToLower(string(name)) || chain2 != chain || start2 != start || issued2 != issued || expires2 != expires {
			t.Fatalf("round trip of %x: %q %d %d %d %d -> %q %d %d %d %d %t", x, name, chain, start, issued, expires, name2, chain2, start2, issued2, expires2, ok2)
		}
	})
}
