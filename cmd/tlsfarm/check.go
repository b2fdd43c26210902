package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/tlsfarm/tlsfarm/config"
)

// check loads and validates a configuration as serve does, without
// starting anything: run it before sending a reload.
func check(args []string, stdout, stderr io.Writer) int {
	cfg, code := load("tlsfarm check", args, stderr)
	if cfg == nil {
		return code
	}
	fmt.Fprintf(stdout, "configuration OK: %d listener(s)", len(cfg.Listeners))
	if cfg.Farm.URL != "" {
		fmt.Fprintf(stdout, ", farm %q", cfg.Farm.Name)
	}
	fmt.Fprintln(stdout)
	return 0
}

// load loads the configuration of serve or check. On failure it prints one
// line and returns a nil config and the exit code.
func load(name string, args []string, stderr io.Writer) (*config.Config, int) {
	cfg, err := config.Load(name, args, os.Getenv, stderr)
	var usage *config.UsageError
	switch {
	case errors.Is(err, flag.ErrHelp):
		return nil, 0
	case errors.As(err, &usage):
		return nil, 2 // the flag package has printed the error and the usage
	case err != nil:
		fmt.Fprintf(stderr, "tlsfarm: %v\n", err)
		return nil, 1
	}
	return cfg, 0
}
