package admin

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/nettest"
)

// TestHealthzHidesExportErrorsWithoutToken: an -on-change command's
// output, which a failing export's error holds, may carry a secret or a
// path. /healthz, which needs no token, says only that the export fails;
// the error itself needs the admin token.
func TestHealthzHidesExportErrorsWithoutToken(t *testing.T) {
	const output = "on-change command: exit status 22: curl: (22) https://deploy:hunter2@cdn.example/reload /etc/tlsfarm/hook.sh"
	now := time.Now()
	exports := func() []ExportStatus {
		return []ExportStatus{
			{Target: "nginx:/run/k", Epoch: 7, OK: true, LastAttempt: now, LastSuccess: now, Exports: 3},
			{Target: "on-change", Epoch: 6, OK: false, Error: output, LastAttempt: now, Exports: 2, Failures: 4},
		}
	}
	get := func(t *testing.T, url, bearer string) Health {
		t.Helper()
		code, body := nettest.Do(t, "GET", url+"/healthz", bearer)
		var h Health
		if err := json.Unmarshal([]byte(body), &h); err != nil || code != 200 {
			t.Fatalf("healthz: %d %s", code, body)
		}
		if bearer == "" || bearer == "wrong" {
			for _, leak := range []string{"hunter2", "/etc/tlsfarm", "curl", "exit status"} {
				if strings.Contains(body, leak) {
					t.Errorf("healthz without the token shows %q: %s", leak, body)
				}
			}
		}
		return h
	}
	check := func(t *testing.T, h Health, wantErr string) {
		t.Helper()
		if h.Status != "degraded" || len(h.Reasons) != 1 || h.Reasons[0] != reasonExports || len(h.Exports) != 2 ||
			h.Exports[0].Error != "" || h.Exports[1].OK || h.Exports[1].Error != wantErr || h.Exports[1].Failures != 4 {
			t.Errorf("healthz: %+v, want the on-change export failing with error %q", h, wantErr)
		}
	}

	t.Run("TokenConfigured", func(t *testing.T) {
		srv, _ := newHandler(t, func(c *Config) { c.Exports = exports })
		check(t, get(t, srv.URL, ""), exportErrorHidden)
		check(t, get(t, srv.URL, "wrong"), exportErrorHidden)
		check(t, get(t, srv.URL, token), output)
	})
	t.Run("NoToken", func(t *testing.T) {
		// As tlsfarm keys serves it: no token, so the error is in the log only.
		srv, _ := newHandler(t, func(c *Config) { c.Exports = exports; c.Token = nil })
		check(t, get(t, srv.URL, ""), exportErrorHidden)
		check(t, get(t, srv.URL, "wrong"), exportErrorHidden)
	})
}
