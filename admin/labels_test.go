package admin

import (
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/nettest"
)

// TestMetricsSurviveALabelThatIsNotUTF8: a key export target names a path,
// and a path on Linux may hold any bytes. Prometheus refuses a label value
// that is not UTF-8; the scrape must still answer, with the value made
// valid, rather than panic in the registry's collecting goroutine, which
// ended the whole process on an unauthenticated GET /metrics.
func TestMetricsSurviveALabelThatIsNotUTF8(t *testing.T) {
	now := time.Now()
	srv, _ := newHandler(t, func(c *Config) {
		c.Exports = func() []ExportStatus {
			return []ExportStatus{{Target: "nginx:/run/k\xff", Epoch: 7, OK: true, LastAttempt: now, LastSuccess: now, Exports: 3}}
		}
	})
	code, body := nettest.Do(t, "GET", srv.URL+"/metrics", "")
	if code != 200 {
		t.Fatalf("metrics: status %d\n%s", code, body)
	}
	if want := `tlsfarm_key_export_epoch{target="nginx:/run/k` + "\uFFFD" + `"} 7`; !strings.Contains(body, want) {
		t.Errorf("metrics lack %q", want)
	}
}
