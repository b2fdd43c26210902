// Command farmbench measures TLS handshakes across three-node farms on
// loopback, side by side in one run: tlsfarm in each of its sharing modes,
// nginx with one ticket key file shared by its three servers, and plain Go
// servers sharing one ticket key. It prints one table of handshakes per
// second, resumption (split by whether the client landed on the node that
// issued its session or another), full and resumed handshake latency, server
// CPU per handshake, and each farm's ratio to nginx and to Go.
//
// Run it with scripts/farmbench, which installs nginx if it is missing:
//
//	scripts/farmbench                       # 3 runs, TLS 1.2 and 1.3, every farm
//	scripts/farmbench -runs 1 -d 2s -farms go,stateless,stateful-wt
//
// Every farm is three server processes on 127.0.0.1; tlsfarm's nodes share
// through Redis at -redis (default 127.0.0.1:6379) under a farm name unique
// to each start, whose keys are deleted when the farm stops. The farm that
// broadcasts over NATS (stateful-wt-nats; its records stay in Redis) uses
// a nats-server (-nats-server) that the benchmark starts on a free port for
// the run and stops at its end, so that the server's CPU per handshake is
// that farm's alone; the table then has a NATS CPU column. The clients,
// -c of them (default 8), each connect to a node picked at random, offer the
// newest session they hold at once (0 ms between connections), and are
// replaced by a fresh client after 1 + -reconnects connections. Each
// measurement is bounded by -d and -n; the first -warmup of load is not
// counted. The farms take turns within each run, each run starting with the
// next farm in -farms, so that slow drifts of a shared machine, and the
// loopback's TIME_WAIT sockets that a farm leaves to the next, spread over
// all of them; the table shows the median of the runs.
//
// The Go and tlsfarm servers run the same loop (handshake, read one request,
// answer 200 "ok", close), as nginx does with `return 200`; only their
// tls.Config differs.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/internal/redact"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

func main() {
	if spec := os.Getenv(nodeEnv); spec != "" {
		if err := runNode(spec); err != nil {
			fmt.Fprintln(os.Stderr, "farmbench node:", err)
			os.Exit(1)
		}
		return
	}
	var o options
	fs := flag.NewFlagSet("farmbench", flag.ExitOnError)
	o.register(fs)
	fs.Parse(os.Args[1:])
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if _, err := bench(ctx, o, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "farmbench:", err)
		os.Exit(1)
	}
}

// options are the benchmark's settings.
type options struct {
	runs       int
	versions   string
	farms      string
	clients    int
	reconnects int
	warmup     time.Duration
	duration   time.Duration
	maxConns   int
	redisURL   string
	nginx      string
	natsServer string
	profileDir string
	curves     string

	lookupTimeout, writeThroughTimeout time.Duration
	flushWindow                        time.Duration

	curveIDs []tls.CurveID // curves, parsed
}

// curveNames are the key exchanges -curves accepts.
var curveNames = map[string]tls.CurveID{
	"X25519MLKEM768": tls.X25519MLKEM768,
	"X25519":         tls.X25519,
	"P256":           tls.CurveP256,
	"P384":           tls.CurveP384,
	"P521":           tls.CurveP521,
}

// parseCurves parses -curves: names separated by commas, or nothing.
func parseCurves(s string) ([]tls.CurveID, error) {
	var ids []tls.CurveID
	for _, name := range strings.Split(s, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		id, ok := curveNames[name]
		if !ok {
			return nil, fmt.Errorf("unknown key exchange %q in -curves (want X25519MLKEM768, X25519, P256, P384 or P521)", name)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

func (o *options) register(fs *flag.FlagSet) {
	var names []string
	for _, k := range kinds {
		names = append(names, k.Name)
	}
	fs.IntVar(&o.runs, "runs", 3, "runs; the table shows the median")
	fs.StringVar(&o.versions, "tls", "1.2,1.3", "TLS versions")
	fs.StringVar(&o.farms, "farms", strings.Join(names, ","), "farms to compare")
	fs.IntVar(&o.clients, "c", 8, "concurrent clients")
	fs.IntVar(&o.reconnects, "reconnects", 5, "connections a client makes after its first, before a fresh client replaces it")
	fs.DurationVar(&o.warmup, "warmup", 500*time.Millisecond, "load before each measurement, not counted")
	fs.DurationVar(&o.duration, "d", 4*time.Second, "longest measurement of one farm at one TLS version")
	fs.IntVar(&o.maxConns, "n", 50000, "most connections in one measurement")
	fs.StringVar(&o.redisURL, "redis", "redis://127.0.0.1:6379/0", "Redis for tlsfarm's farms")
	fs.StringVar(&o.nginx, "nginx", "nginx", "the nginx executable; the nginx farm is left out if it is not found")
	fs.StringVar(&o.natsServer, "nats-server", "nats-server", "the nats-server executable, run on a free port for the farms that broadcast over NATS; they are left out if it is not found")
	fs.StringVar(&o.curves, "curves", "", "key exchanges the clients offer, in order of preference (X25519MLKEM768, X25519, P256, P384, P521); empty: Go's defaults. Keep P256 in the list for TLS 1.2: OpenSSL's servers refuse an ECDSA P-256 certificate to a client that does not list P-256")
	fs.StringVar(&o.profileDir, "cpuprofile", "", "write a CPU profile of node 1 of each Go and tlsfarm farm into this directory")
	fs.DurationVar(&o.lookupTimeout, "lookup-timeout", 0, "tlsfarm nodes' farm.Config.LookupTimeout (0: the default)")
	fs.DurationVar(&o.writeThroughTimeout, "write-through-timeout", 0, "tlsfarm nodes' farm.Config.WriteThroughTimeout (0: the default)")
	fs.DurationVar(&o.flushWindow, "flush-window", 0, "tlsfarm nodes' farm.Config.FlushWindow: how long a new session may wait to be published with more (0: none; at most 100ms)")
}

// A result is everything measured: per TLS version and farm, one
// measurement per run, and the tlsfarm nodes' reports.
type result struct {
	versions []uint16
	kinds    []kind
	runs     [][][]measurement       // [run][version][kind]
	reports  map[string][]nodeReport // each run's, in node order
	nodes    int                     // nodes per farm
	skipped  []string
}

// bench runs the benchmark and prints its table to out, and progress to
// logw.
func bench(ctx context.Context, o options, out, logw io.Writer) (*result, error) {
	res := &result{reports: map[string][]nodeReport{}}
	for _, v := range strings.Split(o.versions, ",") {
		switch strings.TrimSpace(v) {
		case "1.2":
			res.versions = append(res.versions, tls.VersionTLS12)
		case "1.3":
			res.versions = append(res.versions, tls.VersionTLS13)
		default:
			return nil, fmt.Errorf("unknown TLS version %q", v)
		}
	}
	curves, err := parseCurves(o.curves)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "farmbench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755) // nginx's workers may run as another user
	e, err := newEnv(dir)
	if err != nil {
		return nil, err
	}
	res.nodes = e.nodes
	if e.exe, err = os.Executable(); err != nil {
		return nil, err
	}
	e.redisURL, e.lookupTimeout, e.writeThroughTimeout = o.redisURL, o.lookupTimeout, o.writeThroughTimeout
	e.flushWindow = o.flushWindow
	if o.profileDir != "" {
		if err := os.MkdirAll(o.profileDir, 0o755); err != nil {
			return nil, err
		}
		e.profileDir = o.profileDir
	}
	ropt, err := redis.ParseURL(o.redisURL)
	if err != nil {
		return nil, fmt.Errorf("-redis: %v", redact.URLError(err))
	}
	e.redis = redis.NewClient(ropt)
	defer e.redis.Close()
	defer e.cleanRedis()
	e.nginx = findExe(o.nginx)
	e.natsServer = findExe(o.natsServer)
	pool := x509.NewCertPool()
	certPEM, _ := os.ReadFile(e.certFile)
	pool.AppendCertsFromPEM(certPEM)

	for _, name := range strings.Split(o.farms, ",") {
		k, ok := findKind(strings.TrimSpace(name))
		if !ok {
			return nil, fmt.Errorf("unknown farm %q", name)
		}
		if k.node == nil && e.nginx == "" {
			res.skipped = append(res.skipped, k.Name+": nginx not found (scripts/farmbench installs it)")
			continue
		}
		if k.node != nil && k.node(e).NATSBus && e.natsServer == "" {
			res.skipped = append(res.skipped, k.Name+": nats-server not found (-nats-server)")
			continue
		}
		res.kinds = append(res.kinds, k)
	}
	o.curveIDs = curves
	usesRedis, usesNATS := false, false
	for _, k := range res.kinds {
		if k.node != nil && k.node(e).Mode != "" {
			usesRedis = true
		}
		if k.node != nil && k.node(e).NATSBus {
			usesNATS = true
		}
	}
	if usesRedis {
		if err := e.redis.Ping(ctx).Err(); err != nil {
			return nil, fmt.Errorf("redis at %s: %v", redact.URL(o.redisURL), err)
		}
	}
	if usesNATS {
		if err := e.startNATS(); err != nil {
			return nil, err
		}
		defer e.stopNATS()
	}

	fmt.Fprintf(logw, "farmbench: %d runs × %d TLS versions × %d farms, c=%d, %d reconnects, warm-up %v, ≤ %v or ≤ %d connections each\n",
		o.runs, len(res.versions), len(res.kinds), o.clients, o.reconnects, o.warmup, o.duration, o.maxConns)
	started := time.Now()
	load1 := loadAvg()
	for run := range o.runs {
		perV := make([][]measurement, len(res.versions))
		for vi := range perV {
			perV[vi] = make([]measurement, len(res.kinds))
		}
		// Each run starts with another farm: the farm measured after
		// another one on this machine runs slower (its loopback holds the
		// other's TIME_WAIT sockets, and other load drifts), so a fixed
		// order would favour the farm listed first in every run.
		for j := range res.kinds {
			ki := (j + run) % len(res.kinds)
			k := res.kinds[ki]
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			ms, reps, err := measureFarm(ctx, e, k, res.versions, pool, o)
			if err != nil {
				return nil, err
			}
			res.reports[k.Name] = append(res.reports[k.Name], reps...)
			for vi, m := range ms {
				perV[vi][ki] = m
				fmt.Fprintf(logw, "run %d %s %-12s %7.0f hs/s  resumed %6.2f%%  full p50 %5.2f ms  server %4.0f µs/hs  failed %d\n",
					run+1, tls.VersionName(res.versions[vi]), k.Name, m.HSPerSec, pctOf(m.Resumed, m.Offered), msOf(m.FullP50), us(m.ServerCPU), m.Failed)
			}
		}
		res.runs = append(res.runs, perV)
	}
	res.print(out, o, machine(e, load1, loadAvg(), time.Since(started)))
	return res, nil
}

// measureFarm starts a farm of kind k, loads it at each TLS version in
// turn, stops it, and returns what it measured at each version.
func measureFarm(ctx context.Context, e *env, k kind, versions []uint16, pool *x509.CertPool, o options) ([]measurement, []nodeReport, error) {
	r, err := e.start(k)
	if err != nil {
		return nil, nil, err
	}
	var out []measurement
	for _, v := range versions {
		var cpu, rcpu, ncpu [2]time.Duration
		redisOK := true
		l := &load{
			addrs: r.addrs, version: v, pool: pool, clients: o.clients, reconnects: o.reconnects,
			warmup: o.warmup, duration: o.duration, maxConns: o.maxConns, timeout: 10 * time.Second,
			curves: o.curveIDs,
			mark: func(i int) {
				cpu[i] = r.cpu()
				ncpu[i] = e.natsCPU()
				var err error
				if rcpu[i], err = redistest.ServerCPU(ctx, e.redis); err != nil {
					redisOK = false
				}
			},
		}
		lr := l.run(ctx)
		m := lr.measure()
		if lr.done > 0 {
			m.ServerCPU = (cpu[1] - cpu[0]) / time.Duration(lr.done)
			m.RedisCPU = (rcpu[1] - rcpu[0]) / time.Duration(lr.done)
			m.NATSCPU = (ncpu[1] - ncpu[0]) / time.Duration(lr.done)
		}
		if !redisOK || k.node == nil || k.node(e).Mode == "" {
			m.RedisCPU = -1
		}
		if k.node == nil || !k.node(e).NATSBus {
			m.NATSCPU = -1
		}
		out = append(out, m)
	}
	return out, r.stop(e), nil
}

// newCertPEM makes the certificate every farm serves: ECDSA P-256, for
// localhost and 127.0.0.1.
func newCertPEM() (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "localhost"},
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}

func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// machine describes where and how the benchmark ran.
func machine(e *env, load0, load1 string, took time.Duration) string {
	cpu := "?"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	nginx := "none"
	if e.nginx != "" {
		if b, err := exec.Command(e.nginx, "-v").CombinedOutput(); err == nil {
			nginx = strings.TrimPrefix(strings.TrimSpace(string(b)), "nginx version: ")
		}
	}
	redisVer := "?"
	if s, err := e.redis.Info(context.Background(), "server").Result(); err == nil {
		for _, line := range strings.Split(s, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
				redisVer = v
			}
		}
	}
	natsVer := ""
	if e.nats != nil {
		natsVer = ", nats-server ?"
		if b, err := exec.Command(e.natsServer, "--version").CombinedOutput(); err == nil {
			natsVer = ", nats-server " + strings.TrimPrefix(strings.TrimSpace(string(b)), "nats-server: ")
		}
	}
	return fmt.Sprintf("%d × %s, %s, %s, Redis %s%s; load average %s before, %s after; %v",
		runtime.NumCPU(), cpu, runtime.Version(), nginx, redisVer, natsVer, load0, load1, took.Round(time.Second))
}
