package admin

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/metric"
)

// panickyCollector panics at every collection, as a collector with a bug
// would.
type panickyCollector struct{}

func (panickyCollector) Describe(chan<- *prometheus.Desc) {}
func (panickyCollector) Collect(chan<- prometheus.Metric) { panic("collector bug at /secret/path") }

// TestMetricsSurviveAPanickingCollector: a collector that panics — a
// program's own, or the node's when two samples of one metric disagree on
// their labels, which makes the client library panic — costs its own
// metrics and one log line: the scrape answers 200 with the rest, shows
// nothing of the panic, and the log has the panic once, with its stack,
// however many scrapes meet it. Before, the library's recovered panic
// reached the scrape's error log with the goroutine's stack, different at
// each scrape, so that "logged once" logged kilobytes at every scrape (and
// older versions of the library let the panic end the process).
func TestMetricsSurviveAPanickingCollector(t *testing.T) {
	for _, tt := range []struct {
		name string
		edit func(*Config)
		want string // in the log
	}{
		{"a program's collector", func(c *Config) { c.Collectors = []prometheus.Collector{panickyCollector{}} }, "collector bug at /secret/path"},
		{"samples of one metric with other labels", func(c *Config) {
			c.Proxy = func() ProxyStats {
				return ProxyStats{Samples: []metric.Sample{
					{Name: "tlsfarm_test_total", Help: "A test.", Labels: []metric.Label{{Name: "a", Value: "1"}}, Value: 1},
					{Name: "tlsfarm_test_total", Help: "A test.", Labels: []metric.Label{{Name: "a", Value: "1"}, {Name: "b", Value: "2"}}, Value: 2},
				}}
			}
		}, "inconsistent label cardinality"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var logs syncBuffer
			srv, _ := newHandler(t, func(c *Config) {
				tt.edit(c)
				c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			})
			for range 3 {
				code, body := nettest.Do(t, "GET", srv.URL+"/metrics", "")
				if code != 200 {
					t.Fatalf("metrics: status %d\n%s", code, body)
				}
				if !strings.Contains(body, "go_goroutines ") {
					t.Errorf("metrics lack the Go collector's")
				}
				for _, leak := range []string{"collector panicked", "collector bug", "/secret/path", "goroutine ", "cardinality"} {
					if strings.Contains(body, leak) {
						t.Errorf("metrics show %q:\n%s", leak, body)
					}
				}
			}
			if code, _ := nettest.Do(t, "GET", srv.URL+"/healthz", ""); code != 200 {
				t.Errorf("healthz after the panics: %d", code)
			}
			out := logs.String()
			if n := strings.Count(out, tt.want); n != 1 || !strings.Contains(out, "level=ERROR") || !strings.Contains(out, "stack=") {
				t.Errorf("the panic was logged %d times (want once, as an error with its stack, saying %q):\n%s", n, tt.want, out)
			}
			if n := strings.Count(out, "\n"); n > 2 {
				t.Errorf("%d log lines for 3 scrapes, want at most 2 (the panic, and the scrape's error once):\n%s", n, out)
			}
		})
	}
}
