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

	"github.com/tlsfarm/tlsfarm/config"
)

// serve runs the daemon until SIGTERM or SIGINT, reloading on SIGHUP.
func serve(args []string, stderr io.Writer) int {
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
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
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
	go func() {
		// A second stop signal does not wait for the drain.
		for s := range sigs {
			if s != syscall.SIGHUP {
				log.Warn("second stop signal: exiting without waiting for open connections", "signal", s.String())
				os.Exit(1)
			}
		}
	}()
	d.stop()
	return 0
}
