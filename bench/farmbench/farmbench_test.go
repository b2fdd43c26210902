package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/testenv"
)

// TestMain lets the test binary run a benchmark node, as the program does:
// the benchmark starts its Go and tlsfarm nodes by running itself.
func TestMain(m *testing.M) {
	if spec := os.Getenv(nodeEnv); spec != "" {
		if err := runNode(spec); err != nil {
			fmt.Fprintln(os.Stderr, "farmbench node:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestFarmBenchTiny runs the whole benchmark once at a tiny size, so that
// the code behind the README's table keeps working: every farm, both TLS
// versions, real processes, real Redis, nginx where it is installed.
func TestFarmBenchTiny(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 24 server processes")
	}
	url := redistest.URL(t)
	if findExe("nginx") == "" {
		testenv.Skip(t, "nginx is not installed (apt-get install -y nginx-light)")
	}
	if findExe("nats-server") == "" {
		testenv.Skip(t, "nats-server is not installed (apt-get install -y nats-server)")
	}
	var o options
	o.register(flag.NewFlagSet("farmbench", flag.ContinueOnError))
	o.runs = 1
	o.redisURL = url
	// Few connections, bounded by count rather than time: under -race on a
	// busy machine a handshake can take tens of milliseconds. Two
	// connections per client, so that the window holds full handshakes too.
	o.clients, o.reconnects = 4, 1
	o.warmup = 50 * time.Millisecond
	o.duration = 3 * time.Second
	o.maxConns = 24
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, logw bytes.Buffer
	res, err := bench(ctx, o, &out, &logw)
	t.Logf("progress:\n%s", logw.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("table:\n%s", out.String())
	if len(res.kinds) != len(kinds) {
		t.Fatalf("ran %d farms, want all %d (left out: %v)", len(res.kinds), len(kinds), res.skipped)
	}
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		for _, k := range kinds {
			m, ok := res.Median(v, k.Name)
			if !ok {
				t.Fatalf("%s %s: not measured", tls.VersionName(v), k.Name)
			}
			what := fmt.Sprintf("%s %s", tls.VersionName(v), k.Name)
			if m.Conns == 0 || m.HSPerSec <= 0 || m.Failed > 0 {
				t.Errorf("%s: %d connections, %d failed, %.0f hs/s", what, m.Conns, m.Failed, m.HSPerSec)
			}
			if m.FullP50 <= 0 || m.Offered == 0 {
				t.Errorf("%s: no full handshakes or no sessions offered: %+v", what, m)
			}
			if nats := k.Name == "stateful-wt-nats"; nats != (m.NATSCPU >= 0) {
				t.Errorf("%s: NATS CPU %v per handshake, want it measured only for the farm that uses NATS", what, m.NATSCPU)
			}
			rate := pctOf(m.Resumed, m.Offered)
			switch k.Name {
			case "nginx", "go", "stateless":
				// Shared ticket keys resume everywhere, whatever the load.
				if m.Resumed != m.Offered {
					t.Errorf("%s: resumed %d of %d offered sessions, want all", what, m.Resumed, m.Offered)
				}
			case "alone", "go-alone":
				// Each node resumes its own sessions, and only those.
				if m.OtherResumed > 0 || m.SameResumed != m.SameOffered {
					t.Errorf("%s: resumed %d of %d sessions offered to the node that issued them and %d elsewhere, without sharing (%.1f%% in all)",
						what, m.SameResumed, m.SameOffered, m.OtherResumed, rate)
				}
			}
		}
	}
	for _, want := range []string{"| nginx ×3", "| Go ×3", "| tlsfarm stateful, broadcast + write-through | 1.3 |",
		"| tlsfarm stateful, NATS broadcast + Redis write-through | 1.3 |", "NATS CPU µs/hs |", "nats-server v", "nodes' counters"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q", want)
		}
	}
}

func TestFarmOfKey(t *testing.T) {
	for _, tc := range []struct{ key, want string }{
		{"tlsfarm:{farmbench-stateful-wt-1e76e866dfdb}:revoked", "farmbench-stateful-wt-1e76e866dfdb"},
		{"tlsfarm:farmbench-stateful-wt-1e76e866dfdb:{s:0101}", "farmbench-stateful-wt-1e76e866dfdb"},
		{"tlsfarm:farmbench-x", "farmbench-x"},
		{"other", "other"},
	} {
		if got := farmOfKey(tc.key); got != tc.want {
			t.Errorf("farmOfKey(%q) = %q, want %q", tc.key, got, tc.want)
		}
	}
}
