package ticket

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
)

// KeyLen is the length in bytes of a session ticket key.
const KeyLen = 32

// A Key is a session ticket key in the form [tls.Config.SetSessionTicketKeys]
// takes. crypto/tls derives from it the AES-128 key that encrypts a ticket and
// the HMAC-SHA256 key that authenticates it.
//
// Anyone who holds a Key can decrypt every session protected by tickets it
// issued, and can forge tickets. To keep it out of logs, a Key never prints its
// bytes: every fmt verb, [Key.String], [Key.GoString], [Key.LogValue] and
// [Key.MarshalText] (and so encoding/json, encoding/xml and slog's handlers)
// show only its fingerprint, such as "key:1a2b3c4d". To store or send a key,
// take its bytes explicitly with k[:] and encrypt them.
//
// fmt cannot call the methods of a value held in an unexported struct field,
// so a struct of yours that keeps Keys in unexported fields prints their
// bytes; keep them behind a pointer, or give the struct a String method.
//
// The all-zero Key is not a valid key; in a [State] it means "no key".
type Key [KeyLen]byte

// NewKey returns a new random Key read from crypto/rand.
func NewKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return Key{}, fmt.Errorf("ticket: drawing a random key: %w", err)
	}
	return k, nil
}

// KeyFromBytes returns the Key held in b, which must be exactly KeyLen bytes
// long and not all zeros. The Key is a copy: b may be reused or wiped
// afterwards.
func KeyFromBytes(b []byte) (Key, error) {
	if len(b) != KeyLen {
		return Key{}, fmt.Errorf("ticket: key is %d bytes long, want %d", len(b), KeyLen)
	}
	k := Key(b)
	if k.isZero() {
		return Key{}, fmt.Errorf("ticket: key is all zeros")
	}
	return k, nil
}

func (k Key) isZero() bool { return k == Key{} }

// fingerprintLabel separates fingerprints from any other use of SHA-256 over
// the key bytes (crypto/tls hashes keys with SHA-512 to derive its own keys).
const fingerprintLabel = "tlsfarm ticket key fingerprint\x00"

// String returns the Key's fingerprint: "key:" followed by the first four
// bytes, in hexadecimal, of a SHA-256 hash of the key under a fixed label. It
// lets operators tell keys apart, and compare servers, without seeing key
// material. The all-zero Key prints as "key:none".
func (k Key) String() string {
	if k.isZero() {
		return "key:none"
	}
	h := sha256.New()
	h.Write([]byte(fingerprintLabel))
	h.Write(k[:])
	var sum [sha256.Size]byte
	return "key:" + hex.EncodeToString(h.Sum(sum[:0])[:4])
}

// GoString returns the fingerprint in Go-like notation, as in
// "ticket.Key(key:1a2b3c4d)", so that %#v does not print the key bytes either.
func (k Key) GoString() string { return "ticket.Key(" + k.String() + ")" }

// Format implements [fmt.Formatter]. Every verb, %x and %d included, prints
// the fingerprint returned by [Key.String] (%#v prints [Key.GoString]); a
// width pads it, and the '-' flag pads on the right.
func (k Key) Format(f fmt.State, verb rune) {
	s := k.String()
	if verb == 'v' && f.Flag('#') {
		s = k.GoString()
	}
	w, _ := f.Width()
	if f.Flag('-') {
		fmt.Fprintf(f, "%-*s", w, s)
	} else {
		fmt.Fprintf(f, "%*s", w, s)
	}
}

// LogValue implements [slog.LogValuer]: a Key logs as its fingerprint.
func (k Key) LogValue() slog.Value { return slog.StringValue(k.String()) }

// MarshalText implements [encoding.TextMarshaler] by returning the
// fingerprint, never the key bytes, so a Key that reaches encoding/json or a
// slog handler by way of some larger value stays redacted. There is no
// UnmarshalText: a fingerprint cannot be turned back into a key.
func (k Key) MarshalText() ([]byte, error) { return []byte(k.String()), nil }
