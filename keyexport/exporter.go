package keyexport

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/tlsfarm/tlsfarm/ticket"
)

// Defaults for the fields of ExporterConfig.
const (
	DefaultPoll     = 100 * time.Millisecond
	DefaultRetryMin = time.Second
	DefaultRetryMax = 30 * time.Second
)

// OnChangeTarget is the name under which an Exporter reports its OnChange
// hook in Status, beside its targets.
const OnChangeTarget = "on-change"

// An ExporterConfig configures an Exporter.
type ExporterConfig struct {
	// Ring holds the farm's key set, kept current by a farm.Rotator (see
	// farm.Node.RotateTicketKeys). Required. Its epoch 0, the ring's own
	// keys from before it joined the farm, is never exported.
	Ring *ticket.Ring

	// Interval and Keep are the farm's rotation settings (tlsfarm's
	// -ticket-rotation and -ticket-keep). Required.
	Interval time.Duration
	Keep     int

	// Targets receive every new key set. Required.
	Targets []Target

	// OnChange, if not nil, runs after every round of exports in which a
	// target was written (a new key set, or a retry that succeeded), such as
	// a command that makes nginx reload. If it fails, it is retried as a
	// target is.
	OnChange func(ctx context.Context, s *Set) error

	// Logger receives a line per exported key set and per change of a
	// target's error (default slog.Default()). No key bytes are logged.
	Logger *slog.Logger

	// Poll is how often the ring is checked for a new key set (default
	// DefaultPoll). RetryMin and RetryMax bound the wait before a failed
	// export is tried again; it doubles after each failure (defaults
	// DefaultRetryMin, DefaultRetryMax).
	Poll, RetryMin, RetryMax time.Duration
}

// A TargetStatus is the state of one target of an Exporter.
type TargetStatus struct {
	Target      string    // the target's String, or OnChangeTarget
	Epoch       uint64    // the epoch last exported (0: none yet)
	OK          bool      // the last attempt succeeded
	Error       string    // the last attempt's error, if it failed
	LastAttempt time.Time // zero before the first attempt
	LastSuccess time.Time // zero before the first success
	Exports     uint64    // successful exports
	Failures    uint64    // failed attempts
}

// An Exporter exports a Ring's key sets to targets. Make one with
// NewExporter, and call Run.
type Exporter struct {
	cfg ExporterConfig
	log *slog.Logger

	mu     sync.Mutex
	status []TargetStatus // targets in order, then OnChange if set
	retry  []time.Time    // when each may be tried again
	wait   []time.Duration
	onPend bool // OnChange must run again
}

// NewExporter returns an Exporter for cfg.
func NewExporter(cfg ExporterConfig) (*Exporter, error) {
	switch {
	case cfg.Ring == nil:
		return nil, errors.New("keyexport: ExporterConfig.Ring is required")
	case len(cfg.Targets) == 0:
		return nil, errors.New("keyexport: no targets")
	case cfg.Interval <= 0:
		return nil, errors.New("keyexport: ExporterConfig.Interval must be positive")
	case cfg.Keep < 0:
		return nil, errors.New("keyexport: ExporterConfig.Keep is negative")
	}
	if cfg.Poll <= 0 {
		cfg.Poll = DefaultPoll
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = DefaultRetryMin
	}
	if cfg.RetryMax < cfg.RetryMin {
		cfg.RetryMax = max(DefaultRetryMax, cfg.RetryMin)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	e := &Exporter{cfg: cfg, log: cfg.Logger}
	for _, t := range cfg.Targets {
		e.status = append(e.status, TargetStatus{Target: t.String()})
	}
	if cfg.OnChange != nil {
		e.status = append(e.status, TargetStatus{Target: OnChangeTarget})
	}
	e.retry = make([]time.Time, len(e.status))
	e.wait = make([]time.Duration, len(e.status))
	return e, nil
}

// Status returns the state of each target, in the order of
// ExporterConfig.Targets, then that of OnChange if it is set.
func (e *Exporter) Status() []TargetStatus {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]TargetStatus(nil), e.status...)
}

// Ready returns nil once every target has exported a farm key set, and an
// error naming the first that has not. The OnChange hook does not count: a
// terminator may need the files before it can start, and so before the
// hook (a reload) can succeed.
func (e *Exporter) Ready() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, s := range e.status[:len(e.cfg.Targets)] {
		if s.Epoch == 0 {
			return errors.New("no farm key set exported to " + s.Target + " yet")
		}
	}
	return nil
}

// Run exports until ctx is done, then returns ctx.Err().
func (e *Exporter) Run(ctx context.Context) error {
	for {
		next := e.round(ctx)
		wait := e.cfg.Poll
		if !next.IsZero() {
			wait = min(wait, max(time.Until(next), time.Millisecond))
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// round exports the ring's key set to every target that lacks it and may be
// tried now, runs OnChange if a target changed, and returns the earliest
// retry time (zero if none is pending).
func (e *Exporter) round(ctx context.Context) time.Time {
	epoch := e.cfg.Ring.Status().Epoch
	if epoch == 0 || ctx.Err() != nil {
		return time.Time{}
	}
	now := time.Now()
	var set *Set
	defer func() {
		if set != nil {
			set.wipe()
		}
	}()
	load := func() bool {
		if set != nil {
			return true
		}
		st, foreign := e.cfg.Ring.StateByUse()
		var err error
		if keyCopies != nil {
			keyCopies(&st)
		}
		set, err = newSet(st, foreign, e.cfg.Interval, e.cfg.Keep)
		// The Set holds copies of the keys, which round wipes.
		st.Current, st.Next = ticket.Key{}, ticket.Key{}
		clear(st.Previous)
		if err != nil {
			e.log.Error("keyexport: unusable key set", "epoch", st.Epoch, "err", err)
			return false
		}
		return true
	}
	changed := false
	for i, t := range e.cfg.Targets {
		e.mu.Lock()
		due := e.status[i].Epoch != epoch && !now.Before(e.retry[i])
		e.mu.Unlock()
		if !due || !load() {
			continue
		}
		err := t.Export(ctx, set)
		e.record(i, set, err)
		if err == nil {
			changed = true
		}
	}
	if e.cfg.OnChange != nil {
		i := len(e.cfg.Targets)
		e.mu.Lock()
		if changed {
			e.onPend = true
			e.retry[i] = time.Time{}
		}
		due := e.onPend && !now.Before(e.retry[i])
		e.mu.Unlock()
		if due && load() {
			err := e.cfg.OnChange(ctx, set)
			e.record(i, set, err)
			if err == nil {
				e.mu.Lock()
				e.onPend = false
				e.mu.Unlock()
			}
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	var next time.Time
	for i := range e.status {
		pending := e.status[i].Epoch != epoch
		if i == len(e.cfg.Targets) {
			pending = e.onPend
		}
		if pending && !e.retry[i].IsZero() && (next.IsZero() || e.retry[i].Before(next)) {
			next = e.retry[i]
		}
	}
	return next
}

// record records the result of exporting set to target i.
func (e *Exporter) record(i int, set *Set, err error) {
	now := time.Now()
	e.mu.Lock()
	st := &e.status[i]
	st.LastAttempt = now
	prevErr, recovering := st.Error, !st.OK && st.Failures > 0
	if err == nil {
		st.OK, st.Error = true, ""
		st.Epoch = set.Epoch
		st.LastSuccess = now
		st.Exports++
		e.wait[i], e.retry[i] = 0, time.Time{}
	} else {
		st.OK, st.Error = false, err.Error()
		st.Failures++
		e.wait[i] = min(max(2*e.wait[i], e.cfg.RetryMin), e.cfg.RetryMax)
		e.retry[i] = now.Add(e.wait[i])
	}
	target, wait := st.Target, e.wait[i]
	e.mu.Unlock()
	switch {
	case err == nil && recovering:
		e.log.Info("keyexport: exported after failures", "target", target, "epoch", set.Epoch)
	case err == nil:
		e.log.Info("keyexport: exported", "target", target, "epoch", set.Epoch, "current", set.current().Key.String())
	case err.Error() != prevErr:
		e.log.Warn("keyexport: export failed; retrying", "target", target, "epoch", set.Epoch, "err", err, "retry_in", wait.String())
	}
}
