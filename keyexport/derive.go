package keyexport

import (
	"crypto/hkdf"
	"crypto/sha256"
	"fmt"
	"log/slog"

	"github.com/tlsfarm/tlsfarm/ticket"
)

// A consumer names a consumer of derived keys. Each has its own HKDF
// label, so the keys derived for one are unrelated to those of another.
type consumer string

// The consumers this package derives keys for.
const (
	forNginx   consumer = "nginx"   // nginx's 80-byte ssl_session_ticket_key files
	forHAProxy consumer = "haproxy" // HAProxy's tls-ticket-keys, 80-byte keys
	forFile    consumer = "file"    // the JSON key set file (-export file:PATH)
	forCaddy   consumer = "caddy"   // Caddy's session ticket keys (crypto/tls keys)
)

// labelPrefix starts every HKDF label of this package; the format and the
// part of the key follow it.
const labelPrefix = "tlsfarm ticket key export v1 "

// derive returns n bytes derived from the farm key k for format f and the
// named part of the key ("name", "aes", "hmac", "key"...), with HKDF-SHA256
// (RFC 5869; no salt, as k is already uniformly random) and the info string
// "tlsfarm ticket key export v1 " + f + " " + part. The same k, f and part
// always give the same bytes, on every node; different formats or parts give
// unrelated bytes, and none reveals k.
func derive(k ticket.Key, f consumer, part string, n int) []byte {
	out, err := hkdf.Key(sha256.New, k[:], nil, labelPrefix+string(f)+" "+part, n)
	if err != nil {
		// Only a length above 255×32 bytes fails; callers ask for at most 32.
		panic("keyexport: " + err.Error())
	}
	return out
}

// A Key80 is an 80-byte session ticket key of the kind nginx and HAProxy
// read: a 16-byte key name, a 32-byte AES-256 key and a 32-byte HMAC-SHA256
// key, in the order of the terminator that reads it. Like [ticket.Key], it
// prints only a fingerprint.
type Key80 [80]byte

// String returns "key80:" and the first four bytes of the key name in hex:
// the name is sent in the clear in every ticket, so it reveals nothing.
func (k Key80) String() string {
	const hexdigits = "0123456789abcdef"
	b := []byte("key80:")
	for _, c := range k[:4] {
		b = append(b, hexdigits[c>>4], hexdigits[c&15])
	}
	return string(b)
}

// GoString returns String, so %#v prints no key bytes either.
func (k Key80) GoString() string { return k.String() }

// Format implements [fmt.Formatter]: every verb, %d and %x included, prints
// String (a width pads it, the '-' flag on the right), never the key bytes.
func (k Key80) Format(f fmt.State, verb rune) {
	w, _ := f.Width()
	if f.Flag('-') {
		fmt.Fprintf(f, "%-*s", w, k.String())
	} else {
		fmt.Fprintf(f, "%*s", w, k.String())
	}
}

// LogValue implements [slog.LogValuer]: a Key80 logs as String.
func (k Key80) LogValue() slog.Value { return slog.StringValue(k.String()) }

// MarshalText implements [encoding.TextMarshaler] with String, so that a
// Key80 reaching encoding/json or a slog handler inside a larger value shows
// no key bytes.
func (k Key80) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// parts80 derives the name, AES key and HMAC key of the 80-byte key for f.
func parts80(k ticket.Key, f consumer) (name, aes, hmac []byte) {
	return derive(k, f, "name", 16), derive(k, f, "aes", 32), derive(k, f, "hmac", 32)
}

// NginxKey returns the nginx key derived from the farm key k, in the layout
// nginx (1.22 and later) reads from an 80-byte ssl_session_ticket_key file:
// bytes 0-15 the key name, 16-47 the HMAC-SHA256 key, 48-79 the AES-256-CBC
// key.
func NginxKey(k ticket.Key) Key80 {
	name, aes, hmac := parts80(k, forNginx)
	var out Key80
	copy(out[0:16], name)
	copy(out[16:48], hmac)
	copy(out[48:80], aes)
	clear(aes)
	clear(hmac)
	return out
}

// HAProxyKey returns the HAProxy key derived from the farm key k, in the
// layout of HAProxy's struct tls_sess_key_256 (HAProxy 2.6 and later): bytes
// 0-15 the key name, 16-47 the AES-256-CBC key, 48-79 the HMAC-SHA256 key.
// Note that nginx puts the two secrets the other way round.
func HAProxyKey(k ticket.Key) Key80 {
	name, aes, hmac := parts80(k, forHAProxy)
	var out Key80
	copy(out[0:16], name)
	copy(out[16:48], aes)
	copy(out[48:80], hmac)
	clear(aes)
	clear(hmac)
	return out
}

// CaddyKey returns the crypto/tls session ticket key that Caddy uses in
// place of the farm key k.
func CaddyKey(k ticket.Key) [32]byte {
	return [32]byte(derive(k, forCaddy, "key", 32))
}

// fileKey returns the 32-byte key that the JSON file holds in place of k,
// and its 16-byte name.
func fileKey(k ticket.Key) (name, key []byte) {
	return derive(k, forFile, "name", 16), derive(k, forFile, "key", 32)
}
