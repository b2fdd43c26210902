package farm

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
)

// QUICKeys are the keys every server of a farm must share for QUIC to work
// across the farm (RFC 9000 §8.1.3 and §10.3): a NEW_TOKEN or Retry token
// issued by one node lets the client skip address validation on any other,
// and a stateless reset sent by any node ends a connection that another
// node served.
type QUICKeys struct {
	// TokenKey protects address validation tokens (quic.Transport's
	// TokenGeneratorKey).
	TokenKey [32]byte
	// StatelessResetKey derives the stateless reset token of each
	// connection ID (quic.Transport's StatelessResetKey).
	StatelessResetKey [32]byte
}

// String never shows the keys.
func (QUICKeys) String() string { return "QUIC keys (redacted)" }

// GoString never shows the keys.
func (k QUICKeys) GoString() string { return k.String() }

// Format implements [fmt.Formatter]: every verb, %d and %x included, prints
// String, never the keys.
func (k QUICKeys) Format(f fmt.State, verb rune) { io.WriteString(f, k.String()) }

// LogValue implements [slog.LogValuer]: QUICKeys log as String.
func (k QUICKeys) LogValue() slog.Value { return slog.StringValue(k.String()) }

// MarshalText implements [encoding.TextMarshaler] with String, so that
// QUICKeys reaching encoding/json or a slog handler show no key bytes.
func (k QUICKeys) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// DeriveQUICKeys derives the farm's QUIC keys from its current secret (the
// first of secrets), with HKDF-SHA256 under labels of their own, bound to
// the farm's name. Every node with the same farm name and current secret
// derives the same keys; they change only when the farm's current secret
// changes (see docs/quic.md for what that costs).
func DeriveQUICKeys(farmName string, secrets []Secret) (QUICKeys, error) {
	var k QUICKeys
	if len(secrets) == 0 {
		return k, errors.New("farm: no farm secret")
	}
	s := secrets[0]
	if len(s.Bytes) < minSecretLen {
		return k, errors.New("farm: farm secret too short")
	}
	tk, err := derive(s.Bytes, farmName, "quic-token")
	if err != nil {
		return k, err
	}
	rk, err := derive(s.Bytes, farmName, "quic-stateless-reset")
	if err != nil {
		return k, err
	}
	k.TokenKey, k.StatelessResetKey = [32]byte(tk), [32]byte(rk)
	return k, nil
}
