package natsbus

import (
	"bytes"
	"testing"
)

// FuzzDecodeValue checks the decoder of stored values: it never panics, and
// what it accepts re-encodes to the same bytes.
func FuzzDecodeValue(f *testing.F) {
	f.Add(encodeValue(1500, []byte("sealed")))
	f.Add([]byte{})
	f.Add([]byte{valueVersion})
	f.Fuzz(func(t *testing.T, b []byte) {
		n, payload, ok := decodeValue(b)
		if !ok {
			return
		}
		if again := encodeValue(n, payload); !bytes.Equal(again, b) {
			t.Fatalf("round trip: %x -> %x", b, again)
		}
	})
}

// FuzzKVKey checks that the key mapping never panics, yields only characters
// NATS KV allows, and never maps two keys to one.
func FuzzKVKey(f *testing.F) {
	f.Add("s:0123abcd", "revoked")
	f.Add("a::b", "a:b")
	f.Add("=41", "A")
	f.Fuzz(func(t *testing.T, a, b string) {
		ka, kb := kvKey(a), kvKey(b)
		for _, c := range []byte(ka) {
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || bytes.IndexByte([]byte("-/_=."), c) >= 0) {
				t.Fatalf("kvKey(%q) = %q holds %q", a, ka, c)
			}
		}
		if a != b && ka == kb {
			t.Fatalf("kvKey(%q) == kvKey(%q) == %q", a, b, ka)
		}
	})
}
