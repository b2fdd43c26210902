package admin

import (
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// A safeCollector runs a collector so that a panic in it (a bug in the
// node's counters, two samples of one metric with other labels, which
// make the client library panic, a program's own collector) costs that
// collector's metrics and one log line, not the process nor the log. The
// client library's registry recovers a panic in Collect itself (recent
// versions; older ones let it end the process, the registry collecting on
// goroutines of its own, where net/http recovers nothing), but reports it
// as an error holding the goroutine's stack, which differs at each scrape:
// the scrape's error log (scrapeLog), which logs each distinct error
// once, then logged kilobytes at every scrape. Here the panic is logged,
// with its stack, the first time only, and the scrape's error is the same
// at each.
type safeCollector struct {
	c      prometheus.Collector
	log    *slog.Logger
	logged *atomic.Bool
}

// panicDesc describes the invalid metric a panicking collector yields.
var panicDesc = prometheus.NewDesc("tlsfarm_admin_collector_panic", "A metrics collector panicked.", nil, nil)

func newSafeCollector(c prometheus.Collector, log *slog.Logger) safeCollector {
	return safeCollector{c: c, log: log, logged: new(atomic.Bool)}
}

// Describe implements prometheus.Collector.
func (s safeCollector) Describe(ch chan<- *prometheus.Desc) {
	defer func() {
		if r := recover(); r != nil {
			s.report("describing", r)
		}
	}()
	s.c.Describe(ch)
}

// Collect implements prometheus.Collector.
func (s safeCollector) Collect(ch chan<- prometheus.Metric) {
	defer func() {
		if r := recover(); r != nil {
			s.report("collecting", r)
			// The panic itself is logged above, once: the scrape's log
			// (scrapeLog) gets a line that stays the same from scrape to
			// scrape, so that it too logs it once.
			ch <- prometheus.NewInvalidMetric(panicDesc, fmt.Errorf("a metrics collector (%T) panicked; see the log", s.c))
		}
	}()
	s.c.Collect(ch)
}

func (s safeCollector) report(doing string, r any) {
	if s.logged.CompareAndSwap(false, true) {
		s.log.Error("admin: a metrics collector panicked "+doing+"; its metrics are left out of /metrics (logged once)",
			"panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	}
}
