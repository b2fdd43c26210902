package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/tlsfarm/tlsfarm/config"
	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
)

// check loads and validates a configuration as serve does, without
// starting anything: it refuses what serve refuses, including a listen
// address that cannot be bound, and prints what serve warns about. Before a
// reload, the running daemon holds its addresses (which a reload does not
// change): -reload, as the first argument, skips binding them.
func check(args []string, stdout, stderr io.Writer) int {
	reload := false
	if len(args) > 0 && isReloadFlag(args[0]) {
		// A boolean flag, as Go's flags take them: -reload,
		// -reload=true, -reload=false.
		if _, v, ok := strings.Cut(args[0], "="); ok {
			var err error
			if reload, err = strconv.ParseBool(v); err != nil {
				fmt.Fprintf(stderr, "tlsfarm check: %s: want true or false\n", args[0])
				return 2
			}
		} else {
			reload = true
		}
		args = args[1:]
	}
	for _, a := range args {
		if a == "--" {
			break
		}
		if isReloadFlag(a) {
			// Not a setting: the flag parser would call it undefined.
			fmt.Fprintf(stderr, "tlsfarm check: %s must come first: tlsfarm check -reload [flags]\n", a)
			return 2
		}
	}
	cfg, code := load("tlsfarm check [-reload]", args, stderr)
	if cfg == nil {
		return code
	}
	if err := checkTransportURL(cfg); err != nil {
		fmt.Fprintf(stderr, "tlsfarm: %v\n", err)
		return 1
	}
	if !reload {
		// Read at start only, and the running daemon's own since.
		if err := checkRevocationFile(cfg); err != nil {
			fmt.Fprintf(stderr, "tlsfarm: %v\n", err)
			return 1
		}
		if err := checkAddresses(cfg); err != nil {
			fmt.Fprintf(stderr, "tlsfarm: %v\n", err)
			return 1
		}
	}
	for _, w := range configWarnings(cfg) {
		fmt.Fprintf(stderr, "tlsfarm: warning: %s\n", w)
	}
	fmt.Fprintf(stdout, "configuration OK: %d listener(s)", len(cfg.Listeners))
	if cfg.Farm.URL != "" {
		fmt.Fprintf(stdout, ", farm %q", cfg.Farm.Name)
	}
	fmt.Fprintln(stdout)
	return 0
}

// checkTransportURL reads the farm URL as serve's transport will, without
// connecting, so that check refuses a URL whose options the transport
// refuses: Redis and AMQP by opening the transport (their Open reads the
// URL without connecting) and closing it again, NATS by
// natsbus.CheckURL (its Open connects). An unreachable farm is not a
// configuration error.
func checkTransportURL(cfg *config.Config) error {
	if cfg.Farm.URL == "" {
		return nil
	}
	switch transportName(cfg.Farm.URL) {
	case "redis", "amqp":
		_, _, closer, err := openTransport(cfg.Farm.URL, cfg.Farm.Name)
		if err != nil {
			return fmt.Errorf("farm.url: %v", err)
		}
		return closer.Close()
	case "nats":
		if err := natsbus.CheckURL(cfg.Farm.URL, cfg.Farm.Name); err != nil {
			return fmt.Errorf("farm.url: %v", err)
		}
	}
	return nil
}

// checkRevocationFile opens farm.revocation_file, and the files beside it
// that serve reads at start, under the farm secret as serve's farm.Join
// does, without changing them: a file that does not open, or is
// malformed, stops serve's start, and so fails check.
func checkRevocationFile(cfg *config.Config) error {
	if cfg.Farm.URL == "" || cfg.Farm.RevocationFile == "" {
		return nil
	}
	if err := farm.CheckRevocationFile(cfg.Farm.Name, cfg.Farm.Secrets, cfg.Farm.RevocationFile); err != nil {
		return fmt.Errorf("farm.revocation_file: %v", err)
	}
	return nil
}

// isReloadFlag reports whether arg is check's -reload, with or without a
// value (-reload=false).
func isReloadFlag(arg string) bool {
	name, _, _ := strings.Cut(arg, "=")
	return name == "-reload" || name == "--reload"
}

// configLoad is config.Load; a test may replace it (before its parallel
// tests start) to act while the configuration loads.
var configLoad = config.Load

// load loads the configuration of serve or check. On failure it prints one
// line and returns a nil config and the exit code.
func load(name string, args []string, stderr io.Writer) (*config.Config, int) {
	cfg, err := configLoad(name, args, os.Getenv, stderr)
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
