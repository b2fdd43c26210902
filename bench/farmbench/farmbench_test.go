package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"os"
	"slices"
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
	// Go prefers the hybrid post-quantum key exchange in TLS 1.3; the
	// table's note says which each farm negotiated.
	if m, _ := res.Median(tls.VersionTLS13, "go"); m.Groups[tls.X25519MLKEM768] == 0 || len(m.Groups) != 1 {
		t.Errorf("TLS 1.3 Go farm negotiated %v, want X25519MLKEM768 only", m.Groups)
	}
	for _, want := range []string{"key exchange negotiated", "| nginx ×3", "| Go ×3", "| tlsfarm stateful, broadcast + write-through | 1.3 |",
		"| tlsfarm stateful, NATS broadcast + Redis write-through | 1.3 |", "NATS CPU µs/hs |", "nats-server v", "nodes' counters"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q", want)
		}
	}
}

// TestFarmBenchCurves runs two farms with -curves, so that the clients
// offer X25519 and P-256 only: every TLS 1.3 handshake then negotiates
// X25519, whatever the server would prefer.
func TestFarmBenchCurves(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 6 server processes")
	}
	var o options
	o.register(flag.NewFlagSet("farmbench", flag.ContinueOnError))
	o.runs, o.redisURL, o.farms, o.curves = 1, redistest.URL(t), "go,stateless", "X25519,P256"
	o.clients, o.reconnects = 2, 1
	o.warmup, o.duration, o.maxConns = 20*time.Millisecond, 3*time.Second, 8
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out, logw bytes.Buffer
	res, err := bench(ctx, o, &out, &logw)
	if err != nil {
		t.Fatalf("%v\n%s", err, logw.String())
	}
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		for _, name := range []string{"go", "stateless"} {
			m, _ := res.Median(v, name)
			if m.Failed > 0 || m.Groups[tls.X25519] == 0 || len(m.Groups) != 1 {
				t.Errorf("%s %s: %d failed, key exchanges %v, want X25519 only", tls.VersionName(v), name, m.Failed, m.Groups)
			}
		}
	}
	if want := "TLS 1.3: X25519: go, stateless"; !strings.Contains(out.String(), want) {
		t.Errorf("table lacks %q:\n%s", want, out.String())
	}
}

func TestParseCurves(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    []tls.CurveID
		wantErr bool
	}{
		{"", nil, false},
		{"X25519", []tls.CurveID{tls.X25519}, false},
		{" X25519MLKEM768, P256 ", []tls.CurveID{tls.X25519MLKEM768, tls.CurveP256}, false},
		{"X25519,,P384", []tls.CurveID{tls.X25519, tls.CurveP384}, false},
		{"x25519", nil, true},
		{"X25519,brainpool", nil, true},
	} {
		got, err := parseCurves(tc.in)
		if (err != nil) != tc.wantErr || !slices.Equal(got, tc.want) {
			t.Errorf("parseCurves(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestGroupMix(t *testing.T) {
	for _, tc := range []struct {
		in   map[tls.CurveID]int
		want string
	}{
		{nil, "none"},
		{map[tls.CurveID]int{tls.X25519: 5}, "X25519"},
		{map[tls.CurveID]int{tls.X25519: 1, tls.X25519MLKEM768: 3}, "X25519MLKEM768 75% + X25519 25%"},
		{map[tls.CurveID]int{tls.CurveP256: 2, tls.X25519: 2}, "CurveP256 50% + X25519 50%"},
	} {
		if got := groupMix(tc.in); got != tc.want {
			t.Errorf("groupMix(%v) = %q, want %q", tc.in, got, tc.want)
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
