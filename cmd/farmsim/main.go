// Command farmsim is a scale simulation of a tlsfarm farm: K farm nodes in
// one process, each with its own session cache and its own connection to a
// real Redis (standalone or Cluster), issue sessions at a target rate for
// the whole farm and resume each other's sessions, without TLS on the wire
// (the sessions are issued through the WrapSession that the cache installs
// in a tls.Config, as a handshake does). It reports, for each K and mode, the store operations per Redis
// master, Redis memory per stored session, the lookup latency of a session
// issued on another node, and the bus deliveries per node.
//
//	go run ./cmd/farmsim -redis 'redis+cluster://127.0.0.1:7000?addr=...' \
//	    -nodes 3,10,30 -rate 1000 -duration 10s
//
// It writes only keys of farms named farmsim-*, which expire with their
// sessions (-lifetime); it never deletes anything else.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/internal/redact"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/metric"
	"github.com/tlsfarm/tlsfarm/session"
)

// options are farmsim's flags.
type options struct {
	url, nodes, modes          string
	rate, lookups              int
	duration, lifetime, lookup time.Duration

	ks []int       // -nodes, parsed
	ms []farm.Mode // -modes, parsed
}

// parseFlags parses farmsim's command line, refusing values that would
// make a run measure nothing (or divide by zero) and a stray argument (a
// Redis URL without -redis would otherwise run against the default one),
// shown with any password masked.
func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("farmsim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.url, "redis", "redis://127.0.0.1:6379/0", "Redis URL (redis:// or redis+cluster://)")
	fs.StringVar(&o.nodes, "nodes", "3,10,30", "comma-separated node counts K to simulate")
	fs.StringVar(&o.modes, "modes", "broadcast,store-only", "comma-separated farm modes")
	fs.IntVar(&o.rate, "rate", 1000, "new sessions per second for the whole farm")
	fs.IntVar(&o.lookups, "lookups", 200, "cross-node resumptions per second for the whole farm")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "how long each run issues sessions")
	fs.DurationVar(&o.lifetime, "lifetime", 10*time.Minute, "session lifetime (the stored keys' TTL)")
	fs.DurationVar(&o.lookup, "lookup-timeout", 100*time.Millisecond, "farm LookupTimeout for the runs")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	switch {
	case fs.NArg() > 0:
		return nil, fmt.Errorf("farmsim: unexpected argument %q (the Redis URL goes with -redis)", redact.URL(fs.Arg(0)))
	case o.duration < time.Second || o.duration > 5*time.Minute:
		return nil, errors.New("farmsim: -duration must be from 1s to 5m")
	case o.rate < 1 || o.rate > 200000:
		return nil, errors.New("farmsim: -rate must be from 1 to 200000")
	case o.lookups < 0 || o.lookups > 100000:
		return nil, errors.New("farmsim: -lookups must be from 0 to 100000")
	case o.lifetime < o.duration || o.lifetime > 24*time.Hour:
		return nil, errors.New("farmsim: -lifetime must be at least -duration (the sessions must outlive the run) and at most 24h")
	case o.lookup <= 0 || o.lookup > time.Second:
		return nil, errors.New("farmsim: -lookup-timeout must be above 0 and at most 1s")
	}
	// Checked before the first run: a bad count or mode found at its turn
	// ended farmsim after the runs before it, whose results, not yet
	// printed, were lost.
	for _, ks := range strings.Split(o.nodes, ",") {
		k, err := strconv.Atoi(strings.TrimSpace(ks))
		if err != nil || k < 2 || k > 100 {
			return nil, fmt.Errorf("farmsim: -nodes: node count %q: want 2 to 100", ks)
		}
		o.ks = append(o.ks, k)
	}
	for _, ms := range strings.Split(o.modes, ",") {
		ms = strings.TrimSpace(ms)
		mode, err := farm.ParseMode(ms)
		if err != nil || ms == "" {
			return nil, fmt.Errorf("farmsim: -modes: mode %q: want broadcast or store-only", ms)
		}
		o.ms = append(o.ms, mode)
	}
	return o, nil
}

func main() {
	o, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		if strings.HasPrefix(err.Error(), "farmsim: ") { // else the flag package has said what is wrong
			fmt.Fprintln(os.Stderr, err)
		}
		os.Exit(2)
	}
	url, rate, lookups := &o.url, &o.rate, &o.lookups
	duration, lifetime, timeout := &o.duration, &o.lifetime, &o.lookup
	ss, cs, err := oneSession()
	if err != nil {
		log.Fatal(err)
	}
	admin, err := adminClient(*url)
	if err != nil {
		log.Fatal(err)
	}
	defer admin.Close()
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "K\tmode\tsessions/s\tstore ops/s per master\tB/session\tlookup p50\tlookup p99\tresumed\tdeliveries/s per node\tcached per node\t")
	for _, k := range o.ks {
		for _, mode := range o.ms {
			r, err := run(*url, admin, k, mode, *rate, *lookups, *duration, *lifetime, *timeout, ss, cs)
			if err != nil {
				w.Flush() // the runs done so far
				log.Fatal(err)
			}
			fmt.Fprintf(w, "%d\t%s\t%.0f\t%s\t%.0f\t%v\t%v\t%.1f%%\t%.0f\t%.0f\t\n", k, mode, r.rate, r.perMaster, r.bytesPerSession,
				r.p50.Round(10*time.Microsecond), r.p99.Round(10*time.Microsecond), 100*r.resumed, r.deliveries, r.cached)
			fmt.Fprintf(os.Stderr, "farmsim: K=%d %s done (%.0f cross-node resumptions/s made)\n", k, mode, r.lookups)
		}
	}
	w.Flush()
}

// oneSession makes one real TLS 1.3 session in memory: the state that
// every simulated handshake then stores, and the connection state to
// issue and resume it under.
func oneSession() ([]byte, tls.ConnectionState, error) {
	cert, pool := tlstest.SharedCert()
	var state []byte
	var cs tls.ConnectionState
	srv := &tls.Config{Certificates: []tls.Certificate{cert},
		WrapSession: func(c tls.ConnectionState, s *tls.SessionState) ([]byte, error) {
			state, _ = s.Bytes()
			cs = c
			return []byte("ticket"), nil
		}}
	cli := tlstest.ClientConfig(pool, "localhost", tls.VersionTLS13, tls.NewLRUClientSessionCache(1))
	if _, err := tlstest.PipeHandshake(srv, cli, nil); err != nil {
		return nil, cs, err
	}
	if state == nil {
		return nil, cs, fmt.Errorf("farmsim: the handshake issued no session")
	}
	return state, cs, nil
}

// farmOptions are the query options of a farm URL that tlsfarm's Redis
// transport reads and go-redis does not know (see redisbus.Open).
var farmOptions = []string{"echo", "reload", "wait_replicas", "wait_timeout"}

// adminClient opens a go-redis client on the same deployment, for INFO. The
// transport's own options are left out of the URL: go-redis refused them,
// and so every -redis URL that set one (wait_replicas, to measure its cost).
func adminClient(url string) (redis.UniversalClient, error) {
	base, query, _ := strings.Cut(url, "?")
	var keep []string
	for _, kv := range strings.Split(query, "&") {
		k, _, _ := strings.Cut(kv, "=")
		if kv != "" && !slices.Contains(farmOptions, k) {
			keep = append(keep, kv)
		}
	}
	if len(keep) > 0 {
		base += "?" + strings.Join(keep, "&")
	}
	for _, scheme := range []string{"redis", "rediss"} {
		if rest, ok := strings.CutPrefix(base, scheme+"+cluster://"); ok {
			opt, err := redis.ParseClusterURL(scheme + "://" + rest)
			if err != nil {
				return nil, redact.URLError(err) // url.Parse quotes the URL
			}
			return redis.NewClusterClient(opt), nil
		}
	}
	opt, err := redis.ParseURL(base)
	if err != nil {
		return nil, redact.URLError(err) // url.Parse quotes the URL
	}
	return redis.NewClient(opt), nil
}

// masterStats reads, for every master, the commands it has processed, its
// memory and its key count in the database of c.
func masterStats(ctx context.Context, c redis.UniversalClient) (map[string][3]int64, error) {
	out := map[string][3]int64{}
	var mu sync.Mutex
	read := func(ctx context.Context, cl *redis.Client) error {
		info, err := cl.Info(ctx, "stats", "memory", "keyspace").Result()
		if err != nil {
			return err
		}
		var v [3]int64
		// The keys of the URL's database, where the farm writes (a
		// cluster has only db0): db0's alone counted none of a run on
		// another, which then reported 0 bytes per session.
		keyspace := fmt.Sprintf("db%d:keys=", cl.Options().DB)
		for _, line := range strings.Split(info, "\r\n") {
			if s, ok := strings.CutPrefix(line, "total_commands_processed:"); ok {
				v[0], _ = strconv.ParseInt(s, 10, 64)
			}
			if s, ok := strings.CutPrefix(line, "used_memory:"); ok {
				v[1], _ = strconv.ParseInt(s, 10, 64)
			}
			if s, ok := strings.CutPrefix(line, keyspace); ok {
				s, _, _ = strings.Cut(s, ",")
				v[2], _ = strconv.ParseInt(s, 10, 64)
			}
		}
		mu.Lock()
		out[cl.Options().Addr] = v
		mu.Unlock()
		return nil
	}
	if cc, ok := c.(*redis.ClusterClient); ok {
		return out, cc.ForEachMaster(ctx, read)
	}
	return out, read(ctx, c.(*redis.Client))
}

type result struct {
	rate            float64
	perMaster       string
	bytesPerSession float64
	p50, p99        time.Duration
	resumed         float64
	lookups         float64 // cross-node resumptions made per second, while they ran
	deliveries      float64
	cached          float64
}

type simNode struct {
	cache *session.Cache
	tls   *tls.Config // the cache installed: its WrapSession and UnwrapSession
	node  *farm.Node
	tr    *redisbus.Transport
}

// lookupWorkers is how many cross-node resumptions run at once.
const lookupWorkers = 8

func run(url string, admin redis.UniversalClient, k int, mode farm.Mode, rate, lookupRate int, d, lifetime, lookupTimeout time.Duration,
	state []byte, cs tls.ConnectionState) (*result, error) {
	ctx := context.Background()
	name := fmt.Sprintf("farmsim-%d-%s-%x", k, mode, rand.Uint32())
	secret := farm.NewSecret(1)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var ns []*simNode
	defer func() {
		for _, n := range ns {
			n.node.Close()
			n.cache.Close()
			n.tr.Close()
		}
	}()
	for i := range k {
		tr, err := redisbus.Open(url, name)
		if err != nil {
			return nil, err
		}
		cache, err := session.New(&session.Config{Lifetime: lifetime})
		if err != nil {
			return nil, err
		}
		node, err := farm.Join(ctx, farm.Config{
			Farm: name, NodeName: fmt.Sprint("n", i+1), Secrets: []farm.Secret{secret},
			Cache: cache, Bus: tr, Store: tr, Mode: mode, LookupTimeout: lookupTimeout, Logger: quiet,
		})
		if err != nil {
			return nil, err
		}
		sn := &simNode{cache: cache, node: node, tr: tr, tls: &tls.Config{}}
		cache.Install(sn.tls)
		ns = append(ns, sn)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		up := 0
		for _, n := range ns {
			if n.node.Connected() {
				up++
			}
		}
		if up == k {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("farmsim: %d of %d nodes subscribed after 10s", up, k)
		}
		time.Sleep(20 * time.Millisecond)
	}

	before, err := masterStats(ctx, admin)
	if err != nil {
		return nil, err
	}
	// Recently issued IDs, by issuing node, for cross-node resumptions.
	var mu sync.Mutex
	recent := make([][]session.ID, k)
	var issued atomic.Int64
	var lat []time.Duration
	var resumed, tried int
	var lookupsFor time.Duration // how long the lookups ran
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	const tick = 10 * time.Millisecond
	for i, n := range ns {
		wg.Add(1)
		go func() { // issue this node's share of the rate
			defer wg.Done()
			per := float64(rate) / float64(k) * tick.Seconds()
			acc := rand.Float64()
			t := time.NewTicker(tick)
			defer t.Stop()
			for time.Now().Before(stop) {
				<-t.C
				acc += per
				for ; acc >= 1; acc-- {
					ss, err := tls.ParseSessionState(state)
					if err != nil {
						continue
					}
					ticket, _ := n.tls.WrapSession(cs, ss)
					issued.Add(1)
					var id session.ID
					copy(id[:], ticket)
					mu.Lock()
					if len(recent[i]) >= 1024 {
						recent[i] = recent[i][1:]
					}
					recent[i] = append(recent[i], id)
					mu.Unlock()
				}
			}
		}()
	}
	wg.Add(1)
	go func() { // resume other nodes' sessions, a little after they were issued
		defer wg.Done()
		if lookupRate <= 0 {
			return
		}
		gap := time.Second / time.Duration(lookupRate)
		time.Sleep(500 * time.Millisecond)
		began := time.Now()
		// Open loop: the schedule hands lookups to a few workers, so that
		// a slow lookup delays only itself. One at a time, each lookup's
		// latency came off the rate whenever it was near the gap (a
		// loaded CI machine made 424 of 500 a second that way).
		work := make(chan struct{}, lookupRate)
		var lmu sync.Mutex
		var workers sync.WaitGroup
		for range lookupWorkers {
			workers.Go(func() {
				for range work {
					from := rand.N(k)
					at := (from + 1 + rand.N(k-1)) % k
					mu.Lock()
					ids := recent[from]
					var id session.ID
					ok := len(ids) > 64
					if ok {
						id = ids[rand.N(len(ids)-32)] // not the newest: those may be in flight
					}
					mu.Unlock()
					if !ok {
						continue
					}
					start := time.Now()
					got, _ := ns[at].tls.UnwrapSession(id[:], cs)
					took := time.Since(start)
					lmu.Lock()
					lat = append(lat, took)
					tried++
					if got != nil {
						resumed++
					}
					lmu.Unlock()
				}
			})
		}
		for next := began.Add(gap); ; next = next.Add(gap) {
			if d := time.Until(next); d > 0 {
				time.Sleep(d)
			}
			if !time.Now().Before(stop) {
				break
			}
			work <- struct{}{}
		}
		close(work)
		workers.Wait()
		lookupsFor = time.Since(began)
	}()
	start := time.Now()
	wg.Wait()
	elapsed := time.Since(start)
	time.Sleep(300 * time.Millisecond) // let the last batches land
	after, err := masterStats(ctx, admin)
	if err != nil {
		return nil, err
	}

	r := &result{rate: float64(issued.Load()) / elapsed.Seconds()}
	var ops []string
	var mem, keys int64
	addrs := slices.Sorted(func(yield func(string) bool) {
		for a := range after {
			if !yield(a) {
				return
			}
		}
	})
	for _, a := range addrs {
		b, a2 := before[a], after[a]
		ops = append(ops, fmt.Sprintf("%.0f", float64(a2[0]-b[0])/elapsed.Seconds()))
		mem += a2[1] - b[1]
		keys += a2[2] - b[2]
	}
	r.perMaster = strings.Join(ops, "/")
	if keys > 0 {
		r.bytesPerSession = float64(mem) / float64(keys)
	}
	slices.Sort(lat)
	if len(lat) > 0 {
		r.p50 = lat[len(lat)/2]
		r.p99 = lat[len(lat)*99/100]
		r.resumed = float64(resumed) / float64(tried)
		r.lookups = float64(tried) / lookupsFor.Seconds()
	}
	var recv, cached float64
	for _, n := range ns {
		got, _ := metric.Value(n.node.Metrics(), "tlsfarm_farm_received_total", "kind", "session")
		recv += got
		sessions, _ := metric.Value(n.cache.Metrics(), "tlsfarm_cache_sessions")
		cached += sessions
	}
	r.deliveries = recv / float64(k) / elapsed.Seconds()
	r.cached = cached / float64(k)
	return r, nil
}
