package admin

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
)

// maxScrapeErrors bounds how many distinct scrape errors a scrapeLog
// remembers; past it, it forgets them all and starts again.
const maxScrapeErrors = 64

// A scrapeLog is promhttp's error log: it logs each distinct error of a
// /metrics scrape once, as a warning, rather than on every scrape. A
// collector that fails keeps failing at every scrape, and its error
// would otherwise fill the log at the scrape interval.
type scrapeLog struct {
	log  *slog.Logger
	mu   sync.Mutex
	seen map[string]bool
}

// Println implements promhttp.Logger.
func (l *scrapeLog) Println(v ...any) {
	msg := strings.TrimSuffix(fmt.Sprintln(v...), "\n")
	l.mu.Lock()
	if l.seen[msg] {
		l.mu.Unlock()
		return
	}
	if l.seen == nil || len(l.seen) >= maxScrapeErrors {
		l.seen = make(map[string]bool)
	}
	l.seen[msg] = true
	l.mu.Unlock()
	l.log.Warn("admin: /metrics answered without the metrics that failed (logged once)", "err", msg)
}
