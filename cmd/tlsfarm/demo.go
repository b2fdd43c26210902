package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/farm/natsbus/natsembed"
	"github.com/tlsfarm/tlsfarm/probe"
	"github.com/tlsfarm/tlsfarm/proxy"
	"github.com/tlsfarm/tlsfarm/session"
)

// demo runs three nodes on loopback twice — sharing sessions through an
// embedded NATS server, then each on its own — probes both farms as a
// client behind a load balancer would, and prints the difference.
func demo(args []string, stdout, stderr io.Writer) int {
	return runDemo(args, stdout, stderr, demoFarm)
}

// A farmStarter starts the nodes of one of demo's farms (see demoFarm).
type farmStarter func(ctx context.Context, count int, shared bool, natsURL string, log *slog.Logger) ([]string, func(), error)

// runDemo is demo with the function that starts each farm.
func runDemo(args []string, stdout, stderr io.Writer, startFarm farmStarter) int {
	fs := flag.NewFlagSet("tlsfarm demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	n := fs.Int("n", 600, "connections per probe")
	nodes := fs.Int("nodes", 3, "nodes in the farm")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *n < 1 || *nodes < 2 || *nodes > 16 {
		fmt.Fprintln(stderr, "tlsfarm demo: -n must be positive and -nodes between 2 and 16")
		return 2
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx := context.Background()

	fmt.Fprintf(stdout, "starting an embedded NATS server and %d nodes on loopback...\n", *nodes)
	ns, err := natsembed.Start(nil)
	if err != nil {
		fmt.Fprintf(stderr, "tlsfarm demo: %v\n", err)
		return 1
	}
	defer ns.Shutdown()

	var reports [2]*probe.Report
	for i, shared := range []bool{true, false} {
		addrs, stop, err := startFarm(ctx, *nodes, shared, ns.URL(), log)
		if err != nil {
			fmt.Fprintf(stderr, "tlsfarm demo: %v\n", err)
			return 1
		}
		reports[i], err = probe.Run(ctx, probe.Config{
			Targets: addrs, ServerName: "localhost", Pick: probe.PickRandom,
			Connections: *n, Concurrency: 4, Insecure: true,
		}, nil)
		stop()
		if err != nil {
			fmt.Fprintf(stderr, "tlsfarm demo: probe: %v\n", err)
			return 1
		}
	}

	names := []string{"sharing (tlsfarm)", "no sharing"}
	// The probe starts no more clients than connections.
	fmt.Fprintf(stdout, "\n%d connections, each to a random one of %d nodes (%d clients, each resuming its last session):\n\n", *n, *nodes, reports[0].Concurrency)
	fmt.Fprintf(stdout, "%-22s %10s %12s %14s %14s %8s\n", "", "resumed", "cross-node", "full p50", "resumed p50", "failed")
	for i, name := range names {
		t := reports[i].Total
		fmt.Fprintf(stdout, "%-22s %9.1f%% %12d %14v %14v %8d\n", name, 100*t.ResumptionRate, t.CrossNode,
			t.FullLatency.Handshake.P50.Round(time.Microsecond), t.ResumedLatency.Handshake.P50.Round(time.Microsecond), t.Failed)
	}
	// A run whose connections failed measured nothing: its rates (0%, or
	// those of the few that worked) are not the difference the demo shows.
	code := 0
	for i, name := range names {
		t := reports[i].Total
		switch {
		case t.Failed == 0:
		case t.Failed >= t.Connections:
			fmt.Fprintf(stderr, "tlsfarm demo: %s: every one of %d connections failed (%s): the demo measured nothing\n", name, t.Connections, failureKinds(t.Errors))
			code = 1
		default:
			fmt.Fprintf(stderr, "tlsfarm demo: %s: %d of %d connections failed (%s): its figures are only those that worked\n", name, t.Failed, t.Connections, failureKinds(t.Errors))
		}
	}
	if code != 0 {
		return code
	}
	fmt.Fprintf(stdout, "\nWithout sharing a client resumes only when the balancer happens to send it back\nto the node that issued its session: about 1 in %d.\n", *nodes)
	return 0
}

// failureKinds formats a probe's failure counts by kind, most common first.
func failureKinds(errs map[string]int) string {
	kinds := slices.Collect(maps.Keys(errs))
	slices.SortFunc(kinds, func(a, b string) int {
		if c := cmp.Compare(errs[b], errs[a]); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	parts := make([]string, len(kinds))
	for i, k := range kinds {
		parts[i] = fmt.Sprintf("%s %d", k, errs[k])
	}
	return strings.Join(parts, ", ")
}

// demoFarm starts count nodes with the built-in upstream, sharing a farm
// over NATS if shared, and returns their addresses and a function that
// stops them.
func demoFarm(ctx context.Context, count int, shared bool, natsURL string, log *slog.Logger) ([]string, func(), error) {
	cert, err := proxy.SelfSigned("localhost")
	if err != nil {
		return nil, nil, err
	}
	secret := farm.NewSecret(1)
	farmName := fmt.Sprintf("demo-%d", time.Now().UnixNano())
	var stops []func()
	stop := func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	var addrs []string
	var nodes []*farm.Node
	for i := range count {
		cache, err := session.New(&session.Config{Logger: log})
		if err != nil {
			stop()
			return nil, nil, err
		}
		stops = append(stops, func() { cache.Close() })
		if shared {
			tr, err := natsbus.Open(natsURL, farmName, nil)
			if err != nil {
				stop()
				return nil, nil, err
			}
			stops = append(stops, func() { tr.Close() })
			node, err := farm.Join(ctx, farm.Config{Farm: farmName, NodeName: fmt.Sprintf("node-%d", i+1),
				Secrets: []farm.Secret{secret}, Cache: cache, Bus: tr, Store: tr, WriteThrough: true,
				LookupTimeout: 50 * time.Millisecond, Logger: log})
			if err != nil {
				stop()
				return nil, nil, err
			}
			stops = append(stops, func() { node.Close() })
			nodes = append(nodes, node)
		}
		srv, err := proxy.New(proxy.Config{
			Node: fmt.Sprintf("node-%d", i+1), Cache: cache, Logger: log,
			Listeners: []proxy.Listener{{Address: "127.0.0.1:0", MinVersion: tls.VersionTLS12,
				Certificates: []proxy.Certificate{{Certificate: cert}}}},
		})
		if err == nil {
			err = srv.Start()
		}
		if err != nil {
			stop()
			return nil, nil, err
		}
		stops = append(stops, func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			srv.Shutdown(sctx)
		})
		addrs = append(addrs, srv.Addrs()...)
	}
	// Wait until every node has joined, so the probe measures sharing.
	deadline := time.Now().Add(10 * time.Second)
	for _, node := range nodes {
		for !node.Connected() {
			if time.Now().After(deadline) {
				stop()
				return nil, nil, errors.New("the nodes did not connect to the embedded NATS server")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return addrs, stop, nil
}
