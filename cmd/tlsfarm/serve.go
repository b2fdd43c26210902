package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/tlsfarm/tlsfarm/config"
)

// serve runs the daemon until SIGTERM or SIGINT, reloading on SIGHUP.
func serve(args []string, stderr io.Writer) int {
	// SIGHUP is caught before anything else: a reload asked for while the
	// configuration loads (systemctl reload just after start, a
	// certificate renewal's hook) would otherwise end the process, SIGHUP's
	// default action. It is handled once the daemon is up.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP)
	defer signal.Stop(sigs)
	// A log reader that goes away (the pipe to a logger that died) must
	// not take the terminator with it: a write to a broken pipe on
	// standard error would otherwise end the process with SIGPIPE. The
	// lines are lost until the daemon restarts; the connections are not.
	survivePipes()
	cfg, code := load("tlsfarm serve", args, stderr)
	if cfg == nil {
		return code
	}
	level := new(slog.LevelVar)
	lvl, _ := config.ParseLevel(cfg.Log.Level)
	level.Set(lvl)
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(stderr, opts)
	if cfg.Log.Format == "json" {
		h = slog.NewJSONHandler(stderr, opts)
	}
	log := slog.New(h)
	slog.SetDefault(log)

	// Signals are caught from the start: SIGHUP waits for the daemon to be
	// up, and a stop signal while the start waits for the farm (its ticket
	// keys, or the transport in strict mode) ends the wait and stops the
	// daemon, cleanly, before it serves.
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	startCtx, stopStart := context.WithCancelCause(context.Background())
	stops := make(chan os.Signal, 1)
	signal.Notify(stops, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		select {
		case s := <-stops:
			// Logged as it arrives: from here to "stopped" is the
			// daemon's own time to stop.
			log.Debug("stop signal during the start", "signal", s.String())
			stopStart(stopSignal{s})
		case <-startCtx.Done():
		}
	}()
	d, err := start(startCtx, cfg, log, level)
	signal.Stop(stops)
	stopStart(nil)
	var stopped *stoppedError
	if errors.As(err, &stopped) {
		// start closed what it had started.
		var s stopSignal
		errors.As(context.Cause(startCtx), &s)
		log.Info("stop signal while waiting for "+stopped.waitingFor+": stopping before serving", "signal", s.sig.String())
		log.Info("stopped")
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "tlsfarm: %v\n", err)
		return 1
	}

	for s := range sigs {
		if s == syscall.SIGHUP {
			log.Info("SIGHUP: reloading the configuration")
			d.reload(func() (*config.Config, error) {
				return config.Load("tlsfarm serve", args, os.Getenv, io.Discard)
			})
			continue
		}
		log.Info("stopping", "signal", s.String())
		break
	}
	// A second stop signal cuts the drain short, not the flush: open
	// connections are closed at once, and the farm's queues (sessions,
	// retirements, revocations not yet in the store) are still written
	// out, within flushBound; a third signal exits at once.
	cut := make(chan struct{})
	go func() {
		more := 0 // stop signals after the first
		for s := range sigs {
			if s == syscall.SIGHUP {
				continue
			}
			if more++; more == 1 {
				log.Warn("second stop signal: closing open connections now; the farm's queues are still flushed (a third signal exits without)",
					"signal", s.String(), "flush_within", flushBound.String())
				close(cut)
				time.AfterFunc(flushBound, func() {
					log.Error("the stop did not end within the flush bound after the second stop signal: exiting; what the farm had not written is lost",
						"flush_within", flushBound.String())
					os.Exit(1)
				})
				continue
			}
			log.Error("third stop signal: exiting at once; what the farm had not written is lost", "signal", s.String())
			os.Exit(1)
		}
	}()
	if d.stop(cut) {
		// The operator cut the drain: connections were closed, not
		// drained, so the stop was not clean.
		return 1
	}
	return 0
}

// flushBound is how long a stop may take after a second stop signal: the
// farm's flush (at most about three of its 2 s operation timeouts on a
// hung store) and the rest of the close.
const flushBound = 10 * time.Second

// survivePipes makes a write to a broken pipe on standard output or error
// fail with EPIPE instead of ending the process. The signal is caught (on a
// channel never read, which drops it), not ignored: an ignored signal stays
// ignored in the commands a process runs (tlsfarm keys' -on-change), where
// a pipeline relies on SIGPIPE to end its writers.
func survivePipes() {
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
}
