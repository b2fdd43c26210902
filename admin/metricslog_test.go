package admin

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tlsfarm/tlsfarm/internal/nettest"
)

// brokenCollector fails at every collection.
type brokenCollector struct{ desc *prometheus.Desc }

func (c brokenCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c brokenCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.NewInvalidMetric(c.desc, errors.New("collector broke reading /secret/path"))
}

// syncBuffer is a bytes.Buffer that the handler's goroutines may share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestMetricsSurviveABrokenCollector: a collector that fails loses its
// own metric, not the scrape. /metrics, which needs no token, answers 200
// with every other metric and shows nothing of the error, which goes to
// the log once, however many scrapes meet it.
func TestMetricsSurviveABrokenCollector(t *testing.T) {
	var logs syncBuffer
	srv, _ := newHandler(t, func(c *Config) {
		c.Collectors = []prometheus.Collector{brokenCollector{
			prometheus.NewDesc("test_broken", "A collector that fails.", nil, nil),
		}}
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	for range 3 {
		code, body := nettest.Do(t, "GET", srv.URL+"/metrics", "")
		if code != 200 {
			t.Fatalf("metrics: status %d\n%s", code, body)
		}
		for _, want := range []string{"tlsfarm_cache_sessions ", "go_goroutines "} {
			if !strings.Contains(body, want) {
				t.Errorf("metrics lack %q", want)
			}
		}
		for _, leak := range []string{"test_broken", "collector broke", "/secret/path", "goroutine "} {
			if strings.Contains(body, leak) {
				t.Errorf("metrics show %q:\n%s", leak, body)
			}
		}
	}
	out := logs.String()
	if n := strings.Count(out, "collector broke reading /secret/path"); n != 1 || !strings.Contains(out, "level=WARN") {
		t.Errorf("the error was logged %d times, want once as a warning:\n%s", n, out)
	}
}
