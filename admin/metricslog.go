package admin

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
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
//
// An error writing the answer is the scraper's connection failing (it
// went away, or stopped reading past the write timeout), not a metric: it
// goes to the debug level, once per connection. It names the connection's
// addresses, so it differs at each scrape; logged as a collector's error
// it said "answered without the metrics that failed" for every scrape cut
// short, and any client that needs no token could add warnings at will.
type scrapeLog struct {
	log  *slog.Logger
	mu   sync.Mutex
	seen map[string]bool
	conn string // the last connection error, logged once for its scrape
}

// Println implements promhttp.Logger.
func (l *scrapeLog) Println(v ...any) {
	msg := strings.TrimSuffix(fmt.Sprintln(v...), "\n")
	if connError(v) {
		l.mu.Lock()
		repeat := l.conn == msg
		l.conn = msg
		l.mu.Unlock()
		if !repeat {
			l.log.Debug("admin: /metrics scraper's connection failed while answering", "err", msg)
		}
		return
	}
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

// gatherPrefix opens promhttp's log line for the errors of collectors.
const gatherPrefix = "error gathering metrics:"

// connError reports whether promhttp's log line v is about the scrape's
// connection: an error of the network (writing to a client gone, a write
// deadline passed) met while sending the answer. A collector's error is
// never one, even if it is a network error of the collector's own.
func connError(v []any) bool {
	if len(v) == 0 || v[0] == gatherPrefix {
		return false
	}
	for _, x := range v[1:] {
		if err, ok := x.(error); ok {
			var op *net.OpError
			if errors.As(err, &op) {
				return true
			}
		}
	}
	return false
}
