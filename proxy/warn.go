package proxy

import (
	"log/slog"
	"sync"
	"time"
)

// warnInterval is the shortest time between two warn lines for one reason
// of failure (a handshake failure reason, an upstream error, a sender the
// PROXY protocol does not trust). Failures in between are counted into the
// next line, so that a steady stream of them (a balancer missing
// send-proxy, a dead upstream) shows at info level without flooding the
// log.
const warnInterval = 10 * time.Second

// A warner writes rate-limited warn lines, one reason at a time.
type warner struct {
	log   *slog.Logger
	every time.Duration
	now   func() time.Time

	mu      sync.Mutex
	reasons map[string]*warnState
}

type warnState struct {
	next    time.Time // no line before this
	pending uint64    // failures since the last line
}

func newWarner(log *slog.Logger) *warner {
	return &warner{log: log, every: warnInterval, now: time.Now, reasons: map[string]*warnState{}}
}

// note counts one failure for reason, and writes msg at warn level if no
// line for reason was written in the last interval, with the number of
// failures it stands for ("count") and the client address of this one
// ("example_client"). It reports whether it wrote the line.
func (w *warner) note(reason, msg, client string, attrs ...any) bool {
	now := w.now()
	w.mu.Lock()
	st := w.reasons[reason]
	if st == nil {
		st = &warnState{}
		w.reasons[reason] = st
	}
	st.pending++
	if now.Before(st.next) {
		w.mu.Unlock()
		return false
	}
	count := st.pending
	st.pending = 0
	st.next = now.Add(w.every)
	w.mu.Unlock()
	args := append([]any{"reason", reason, "count", count, "example_client", client, "per", w.every.String()}, attrs...)
	w.log.Warn(msg, args...)
	return true
}
