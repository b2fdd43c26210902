package farm_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/tlsfarm/tlsfarm/farm"
)

// TestQUICKeysRedactedEverywhere checks that QUICKeys show no key bytes in
// any fmt verb, in encoding/json or in slog's handlers: %d and JSON printed
// both keys.
func TestQUICKeysRedactedEverywhere(t *testing.T) {
	k, err := farm.DeriveQUICKeys("quickeys-redact", []farm.Secret{{Bytes: bytes.Repeat([]byte{7}, 32)}})
	if err != nil {
		t.Fatal(err)
	}
	j, err := json.Marshal(struct{ K farm.QUICKeys }{k})
	if err != nil {
		t.Fatal(err)
	}
	var text, js bytes.Buffer
	slog.New(slog.NewTextHandler(&text, nil)).Info("x", "k", k)
	slog.New(slog.NewJSONHandler(&js, nil)).Info("x", "k", k)
	outs := map[string]string{
		"%d": fmt.Sprintf("%d", k), "%x": fmt.Sprintf("%x", k), "%+v": fmt.Sprintf("%+v", k),
		"%#v": fmt.Sprintf("%#v", k), "%v ptr": fmt.Sprintf("%v", &k), "%d ptr": fmt.Sprintf("%d", &k),
		"json": string(j), "slog text": text.String(), "slog json": js.String(),
	}
	for what, out := range outs {
		for _, key := range [][32]byte{k.TokenKey, k.StatelessResetKey} {
			for _, enc := range []string{
				strings.Trim(fmt.Sprint(key[:6]), "[]"),
				strings.Trim(strings.ReplaceAll(fmt.Sprint(key[:6]), " ", ","), "[]"),
				fmt.Sprintf("%x", key[:6]),
			} {
				if strings.Contains(out, enc) {
					t.Errorf("%s prints key bytes: %q", what, out)
				}
			}
		}
		if !strings.Contains(out, "redacted") {
			t.Errorf("%s: %q", what, out)
		}
	}
}
