package keyexport

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"testing"

	"github.com/tlsfarm/tlsfarm/ticket"
)

// testKey returns a fixed farm key whose bytes are seed, seed+1, ...
func testKey(seed byte) ticket.Key {
	var k ticket.Key
	for i := range k {
		k[i] = seed + byte(i)
	}
	return k
}

// TestKey80Layout checks that each 80-byte key puts the name and the two
// secrets where its terminator reads them: nginx reads the HMAC key before
// the AES key, HAProxy the other way round.
func TestKey80Layout(t *testing.T) {
	k := testKey(1)
	tests := []struct {
		name      string
		key       Key80
		f         consumer
		aes, hmac [2]int
	}{
		{"nginx", NginxKey(k), forNginx, [2]int{48, 80}, [2]int{16, 48}},
		{"haproxy", HAProxyKey(k), forHAProxy, [2]int{16, 48}, [2]int{48, 80}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !bytes.Equal(tt.key[:16], derive(k, tt.f, "name", 16)) {
				t.Error("bytes 0-15 are not the key name")
			}
			if !bytes.Equal(tt.key[tt.aes[0]:tt.aes[1]], derive(k, tt.f, "aes", 32)) {
				t.Errorf("bytes %d-%d are not the AES key", tt.aes[0], tt.aes[1]-1)
			}
			if !bytes.Equal(tt.key[tt.hmac[0]:tt.hmac[1]], derive(k, tt.f, "hmac", 32)) {
				t.Errorf("bytes %d-%d are not the HMAC key", tt.hmac[0], tt.hmac[1]-1)
			}
		})
	}
}

// TestDeriveGolden pins the derivation: a change to a label or to HKDF's
// use would make agents of two versions disagree on every key.
func TestDeriveGolden(t *testing.T) {
	k := testKey(1)
	tests := []struct {
		name, got, want string
	}{
		{"nginx", hex.EncodeToString(func() []byte { b := NginxKey(k); return b[:] }()), goldenNginx},
		{"haproxy", hex.EncodeToString(func() []byte { b := HAProxyKey(k); return b[:] }()), goldenHAProxy},
		{"caddy", hex.EncodeToString(func() []byte { b := CaddyKey(k); return b[:] }()), goldenCaddy},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s key of the test key:\n got %s\nwant %s", tt.name, tt.got, tt.want)
		}
	}
}

// TestFormatsDeriveUnrelatedKeys checks that no two formats, parts or farm
// keys share derived bytes, and that none is the farm key itself.
func TestFormatsDeriveUnrelatedKeys(t *testing.T) {
	seen := map[string]string{}
	for _, seed := range []byte{1, 2} {
		k := testKey(seed)
		for _, f := range []consumer{forNginx, forHAProxy, forFile, forCaddy, "filler"} {
			for _, part := range []string{"name", "aes", "hmac", "key", "0"} {
				b := derive(k, f, part, 32)
				if bytes.Equal(b, k[:]) {
					t.Fatalf("%s %s is the farm key", f, part)
				}
				what := fmt.Sprintf("seed %d %s %s", seed, f, part)
				if prev, dup := seen[string(b)]; dup {
					t.Fatalf("%s derives the same bytes as %s", what, prev)
				}
				seen[string(b)] = what
			}
		}
	}
}

func TestKey80PrintsNoSecret(t *testing.T) {
	k := NginxKey(testKey(1))
	for _, s := range []string{k.String(), fmt.Sprintf("%v", k), fmt.Sprintf("%#v", k), fmt.Sprint(k)} {
		if len(s) != len("key80:")+8 || s[:6] != "key80:" {
			t.Errorf("Key80 prints as %q", s)
		}
	}
}
