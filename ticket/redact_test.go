package ticket_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/ticket"
)

// fixedKeys are keys with known bytes, so a leak of any four of them in a row
// can be searched for in every rendering the tests produce.
func fixedKeys(n int) []ticket.Key {
	keys := make([]ticket.Key, n)
	for i := range keys {
		keys[i] = sha256.Sum256([]byte(fmt.Sprint("redaction test key ", i)))
	}
	return keys
}

// leaks reports the first rendering of key bytes found in out: any four
// consecutive bytes of a key in hex (either case), in decimal as fmt prints a
// byte array or slice, as JSON or %#v lists, or the key in base64.
func leaks(out string, keys []ticket.Key) string {
	lower := strings.ToLower(out)
	for _, k := range keys {
		if s := base64.StdEncoding.EncodeToString(k[:]); strings.Contains(out, s[:12]) {
			return "base64 " + s[:12]
		}
		for i := 0; i+4 <= len(k); i++ {
			w := k[i : i+4]
			for _, form := range []string{
				hex.EncodeToString(w),
				fmt.Sprintf("%d %d %d %d", w[0], w[1], w[2], w[3]),
				fmt.Sprintf("%d,%d,%d,%d", w[0], w[1], w[2], w[3]),
				fmt.Sprintf("%#x, %#x, %#x, %#x", w[0], w[1], w[2], w[3]),
				fmt.Sprintf("% x", w),
			} {
				if strings.Contains(lower, form) {
					return form
				}
			}
		}
	}
	return ""
}

func TestLeakDetectorWorks(t *testing.T) {
	keys := fixedKeys(1)
	raw := [32]byte(keys[0])
	for _, out := range []string{
		fmt.Sprintf("%x", raw[:]),
		fmt.Sprintf("%X", raw),
		fmt.Sprintf("%v", raw),
		fmt.Sprintf("%#v", raw),
		fmt.Sprintf("% x", raw[:]),
		string(must(json.Marshal(raw))),
		string(must(json.Marshal(raw[:]))), // base64
	} {
		if leaks(out, keys) == "" {
			t.Errorf("leak detector missed %q", out)
		}
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestKeysNeverPrinted renders keys, states, statuses and rings with every
// fmt verb, encoding/json and both slog handlers, and checks that no key
// bytes appear, only fingerprints.
func TestKeysNeverPrinted(t *testing.T) {
	ks := fixedKeys(5)
	state := ticket.State{Epoch: 3, Current: ks[0], Next: ks[1], Previous: ks[2:4], Rotated: time.Unix(1e9, 0)}
	ring := newRing(t, ticket.RingConfig{Initial: &state})
	// A user's struct that holds keys in exported fields. (fmt cannot call
	// the methods of a value in an unexported field, so a struct that holds
	// keys there prints them raw: the Key documentation says so.)
	type wrapper struct {
		Name string
		Key  ticket.Key
		Keys []ticket.Key
	}
	values := map[string]any{
		"Key":           ks[0],
		"*Key":          &ks[0],
		"[]Key":         ks,
		"map[Key]int":   map[ticket.Key]int{ks[0]: 1},
		"State":         state,
		"*State":        &state,
		"Ring.State()":  ring.State(),
		"Status":        ring.Status(),
		"*Ring":         ring,
		"user struct":   wrapper{"w", ks[4], ks},
		"*user struct":  &wrapper{"w", ks[4], ks},
		"zero Key":      ticket.Key{},
		"error message": ring.Update(ks[0], ks[0]),
	}
	verbs := []string{"%v", "%+v", "%#v", "%s", "%x", "%X", "%d", "%q", "% x", "%#x", "%10v", "%-12s|"}
	for name, v := range values {
		var outs []string
		for _, verb := range verbs {
			outs = append(outs, verb+" => "+fmt.Sprintf(verb, v))
		}
		outs = append(outs, "Sprint => "+fmt.Sprint(v), "Sprintln => "+fmt.Sprintln(v))
		if j, err := json.Marshal(v); err == nil {
			outs = append(outs, "json => "+string(j))
		}
		for _, h := range []func(*bytes.Buffer) slog.Handler{
			func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) },
			func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) },
		} {
			var buf bytes.Buffer
			slog.New(h(&buf)).Info("msg", "value", v, slog.Group("g", "value", v))
			outs = append(outs, "slog => "+buf.String())
		}
		for _, out := range outs {
			if leak := leaks(out, ks); leak != "" {
				t.Errorf("%s: %s leaks key bytes (%s)", name, out, leak)
			}
		}
	}
}

func TestKeyFormats(t *testing.T) {
	k := fixedKeys(1)[0]
	fp := k.String()
	if len(fp) != len("key:")+8 || !strings.HasPrefix(fp, "key:") {
		t.Fatalf("String() = %q, want key: and 8 hex digits", fp)
	}
	tests := []struct{ format, want string }{
		{"%v", fp},
		{"%s", fp},
		{"%x", fp},
		{"%d", fp},
		{"%+v", fp},
		{"%#v", "ticket.Key(" + fp + ")"},
		{"%14v", "  " + fp},
		{"%-14v|", fp + "  |"},
	}
	for _, tt := range tests {
		if got := fmt.Sprintf(tt.format, k); got != tt.want {
			t.Errorf("Sprintf(%q) = %q, want %q", tt.format, got, tt.want)
		}
	}
	if got := (ticket.Key{}).String(); got != "key:none" {
		t.Errorf("zero Key prints %q, want key:none", got)
	}
	if got := string(must(json.Marshal(k))); got != `"`+fp+`"` {
		t.Errorf("json.Marshal(key) = %s, want %q", got, fp)
	}
	if fixedKeys(2)[1].String() == fp {
		t.Error("two keys share a fingerprint")
	}
}

// TestRingLogsNoKeys checks the ring's own log records.
func TestRingLogsNoKeys(t *testing.T) {
	ks := fixedKeys(4)
	var buf bytes.Buffer
	r := newRing(t, ticket.RingConfig{
		Logger:  slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Initial: &ticket.State{Current: ks[0], Next: ks[1]},
	})
	if err := r.Rotate(); err != nil {
		t.Fatal(err)
	}
	if err := r.Update(ks[2], ks[3]); err != nil {
		t.Fatal(err)
	}
	if err := r.Set(ticket.State{Epoch: 10, Current: ks[3], Next: ks[2], Previous: ks[:2]}); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if n := strings.Count(out, "\n"); n != 3 {
		t.Errorf("%d log records, want 3:\n%s", n, out)
	}
	for _, want := range []string{`"msg":"ticket: keys rotated"`, `"msg":"ticket: keys updated"`, `"msg":"ticket: key set installed"`, `"current":"` + ks[3].String() + `"`} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s:\n%s", want, out)
		}
	}
	if leak := leaks(out, ks); leak != "" {
		t.Errorf("log leaks key bytes (%s):\n%s", leak, out)
	}
}
