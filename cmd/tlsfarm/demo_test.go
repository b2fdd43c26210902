package main

import (
	"bytes"
	"context"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/tlsfarm/tlsfarm/internal/nettest"
)

// TestDemoShowsTheDifference runs "tlsfarm demo": with sharing, nearly every
// resumption succeeds across three nodes; without, about one in three.
func TestDemoShowsTheDifference(t *testing.T) {
	t.Parallel()
	code, out, errs := runCmd(t, []string{"demo", "-n", "150"})
	if code != 0 {
		t.Fatalf("demo: exit %d\n%s\n%s", code, out, errs)
	}
	rate := func(row string) float64 {
		m := regexp.MustCompile(regexp.QuoteMeta(row) + `\s+([0-9.]+)%`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no %q row in:\n%s", row, out)
		}
		v, _ := strconv.ParseFloat(m[1], 64)
		return v
	}
	on, off := rate("sharing (tlsfarm)"), rate("no sharing")
	t.Logf("resumption with sharing %.1f%%, without %.1f%%", on, off)
	if on < 95 || off > 70 {
		t.Fatalf("sharing %.1f%%, no sharing %.1f%%: want at least 95%% and at most 70%%\n%s", on, off, out)
	}
}

// TestDemoHelpExitsZero: "tlsfarm demo -h" prints the flags and exits 0,
// as every other command's -h does; a bad flag still exits 2.
func TestDemoHelpExitsZero(t *testing.T) {
	t.Parallel()
	if code, _, errs := runCmd(t, []string{"demo", "-h"}); code != 0 || !strings.Contains(errs, "-nodes") {
		t.Errorf("demo -h: exit %d, stderr %q", code, errs)
	}
	if code, _, _ := runCmd(t, []string{"demo", "-no-such-flag"}); code != 2 {
		t.Errorf("demo -no-such-flag: exit %d, want 2", code)
	}
}

// TestDemoFailsWhenEveryConnectionFails: a demo whose probe reached no
// node measured nothing; it says so on stderr and exits 1, rather than
// printing a table of zeros and exiting 0.
func TestDemoFailsWhenEveryConnectionFails(t *testing.T) {
	t.Parallel()
	// Nodes that are gone: ports that refuse every connection.
	dead := func(ctx context.Context, count int, shared bool, natsURL string, log *slog.Logger) ([]string, func(), error) {
		var addrs []string
		for range count {
			addrs = append(addrs, nettest.Refused(t)) // held: no other test's server takes the port
		}
		return addrs, func() {}, nil
	}
	var stdout, stderr bytes.Buffer
	code := runDemo([]string{"-n", "20"}, &stdout, &stderr, dead)
	if code != 1 || !strings.Contains(stderr.String(), "every one of 20 connections failed") {
		t.Fatalf("demo against dead nodes: exit %d, stderr %q; want exit 1 saying every connection failed\n%s", code, stderr.String(), stdout.String())
	}
	if strings.Contains(stdout.String(), "about 1 in") {
		t.Errorf("demo against dead nodes still drew its conclusion:\n%s", stdout.String())
	}
}

// TestDemoSaysHowManyClientsRan: with fewer connections than its four
// clients, the probe runs one client per connection, and the demo says so.
func TestDemoSaysHowManyClientsRan(t *testing.T) {
	t.Parallel()
	code, out, errs := runCmd(t, []string{"demo", "-n", "2", "-nodes", "2"})
	if code != 0 {
		t.Fatalf("demo: exit %d\n%s\n%s", code, out, errs)
	}
	if !strings.Contains(out, "2 connections, each to a random one of 2 nodes (2 clients,") {
		t.Errorf("demo -n 2 does not say that 2 clients ran:\n%s", out)
	}
}
