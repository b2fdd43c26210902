package keyexport

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
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

// TestKey80RedactedEverywhere checks the ways a Key80 can reach a log line
// or an error besides String: every fmt verb, encoding/json and slog's
// handlers must show the fingerprint only. (%d and both JSON forms printed
// all 80 bytes.)
func TestKey80RedactedEverywhere(t *testing.T) {
	k := NginxKey(testKey(1))
	secret := k[16:48] // the HMAC key: never printed in any form
	j, err := json.Marshal(struct{ K Key80 }{k})
	if err != nil {
		t.Fatal(err)
	}
	var text, js bytes.Buffer
	slog.New(slog.NewTextHandler(&text, nil)).Info("x", "k", k, "v", []Key80{k})
	slog.New(slog.NewJSONHandler(&js, nil)).Info("x", "k", k, "v", []Key80{k})
	outs := map[string]string{
		"%d": fmt.Sprintf("%d", k), "%x": fmt.Sprintf("%x", k), "%X": fmt.Sprintf("%X", k),
		"%+v": fmt.Sprintf("%+v", k), "%q": fmt.Sprintf("%q", k), "%o": fmt.Sprintf("%o", k),
		"%v slice": fmt.Sprintf("%v", []Key80{k}), "%d struct": fmt.Sprintf("%d", struct{ K Key80 }{k}),
		"json": string(j), "slog text": text.String(), "slog json": js.String(),
	}
	for what, out := range outs {
		if !strings.Contains(out, k.String()) {
			t.Errorf("%s: %q lacks the fingerprint", what, out)
		}
		for _, enc := range []string{fmt.Sprint(secret[:8]), fmt.Sprintf("%d", secret[0:4]), fmt.Sprintf("%x", secret[:8]), fmt.Sprintf("%X", secret[:8]), base64.StdEncoding.EncodeToString(secret[:12]), strings.Trim(strings.ReplaceAll(fmt.Sprint(secret[:8]), " ", ","), "[]")} {
			if strings.Contains(out, strings.Trim(enc, "[]")) {
				t.Errorf("%s prints key bytes: %q", what, out)
			}
		}
	}
	if got := fmt.Sprintf("[%-16v]", k); got != "["+k.String()+"  ]" {
		t.Errorf("%%-16v = %q", got)
	}
}
