package farm_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/metric"
	"github.com/tlsfarm/tlsfarm/session"
	"github.com/tlsfarm/tlsfarm/ticket"
)

// BenchmarkSharingCPU measures what sharing costs per handshake, sender and
// receivers together. Node A of a three-node farm over the Redis at
// 127.0.0.1:6379 serves handshakes (client and server over an in-memory
// pipe), and B and C receive what A shares. All three nodes, their Redis
// clients and the clients run in this process, so cpu-µs/op is the CPU of
// one handshake plus all the farm work it causes (not Redis's own, another
// process): after the handshakes the benchmark waits until A has written
// and published everything they made, and B and C have received it, by the
// nodes' counters (A does not receive its own messages back: redisbus
// publishes on a channel of its own). sharing=none is the same handshake on a cache
// alone: the difference is the cost of sharing.
//
// The handshakes, by the sessions each one shares:
//
//   - tls=1.2/kind=resumed: each client resumes its newest ticket. A TLS 1.2
//     resumption keeps its session under a reissued ticket (see
//     docs/design.md, Chains, grace, single use), so nothing is shared;
//     what is left is the hook and an idle farm's own work.
//   - tls=1.2/kind=full: a full handshake; its new session is shared.
//   - tls=1.3/kind=resumed: each client resumes its newest ticket; the
//     successor is shared, and the parent's record is rewritten in the
//     store with its grace cut (store-only: also its child link, and the
//     cut sent to the peers).
//
// sharing=write-through-carry is write-through with Config.CarrySessions:
// A rotates ticket keys with the farm, and every ticket it issues carries
// its session (sealed under those keys), so the flush window is 80 ms and
// the grace cut waits with its child. The clients stay on A, so no copy is
// admitted: what it measures is the carried tickets' sealing and the
// batching the window allows.
//
// sharing=async-window=5ms and =10ms are async with a Config.FlushWindow:
// new sessions wait up to the window for more to share with, and so does
// the grace cut of a TLS 1.3 resumption's parent, which waits with its
// child.
//
// conc=1 is one client that pauses 1 ms after each handshake: a lightly
// loaded node, where the farm has shared one handshake's session before the
// next, so every session is its own batch (sessions/msg 1), as on the farm
// benchmark's nodes. ns/op includes the pause; the pause's own CPU (80–150
// µs a wake-up on the 2-core VM, and noisy) is in sharing=none too. conc=8 is eight
// clients back to back: a saturated node, where batches form. With the
// in-memory pipes no handshake blocks in the kernel, so the farm's replies
// from Redis are noticed late (Go's netpoller runs when a P idles, or every
// 10 ms from sysmon) and batches grow larger than a real server at the
// same rate would make them: conc=8 is the cheap end of sharing, conc=1 the
// dear one.
//
// The clients' first sessions are made, and shared, before the measurement,
// once every node is connected; each must be a cached session (an ID), not
// a fallback ticket. The benchmark fails if a handshake resumes or not
// other than its kind says, if a TLS 1.2 resumption is not given a
// reissued ticket, if A makes, stores, publishes or cuts other than the
// kind and mode call for, if A issues a stateless ticket, or if the farm
// has not delivered everything within 10 s.
//
// A 64 MB heap ballast (never touched) gives every run the same, server-like
// heap: the garbage collector runs about once per 64 MB allocated, with a
// farm or without. At this benchmark's tiny live heap it would otherwise
// run every few hundred handshakes, cost more than half of a resumed TLS
// 1.2 handshake, and run less often with a farm (whose nodes add some MB of
// live heap) than without, so that a farm measured cheaper than none. B/op
// and allocs/op are the whole process's while the handshakes ran, not the
// farm's catch-up after them.
//
// Besides cpu-µs/op it reports syscalls/op and ctxsw/op (see
// tlstest.Counters), shared/op (new sessions A made, and shared, per
// handshake) and sessions/msg (sessions per bus message the receivers got:
// how well A batched). A pass at -benchtime 1000x takes about 35 s. The
// machine drifts by tens of % between sub-benchmarks a minute apart: run
// passes of -count 1 several times and compare each case with sharing=none
// of the same pass, rather than -count N, which runs each case N times in
// a row. CI compiles it (go vet, go test) without running it.
func BenchmarkSharingCPU(b *testing.B) {
	url := redistest.URL(b)
	cert, pool := tlstest.SharedCert()
	setups := []struct {
		name  string
		tweak func(*farm.Config) // nil: no farm
	}{
		{"none", nil},
		{"async", func(*farm.Config) {}},
		{"async-window=5ms", func(c *farm.Config) { c.FlushWindow = 5 * time.Millisecond }},
		{"async-window=10ms", func(c *farm.Config) { c.FlushWindow = 10 * time.Millisecond }},
		{"write-through", func(c *farm.Config) { c.WriteThrough = true }},
		{"write-through-lazy", func(c *farm.Config) { c.WriteThrough, c.LazyPeers = true, true }},
		{"store-only-write-through", func(c *farm.Config) { c.WriteThrough, c.Mode = true, farm.StoreOnly }},
		{"write-through-carry", func(c *farm.Config) { c.WriteThrough, c.CarrySessions = true, true }},
	}
	// The ballast (see above): untouched, it costs no memory.
	ballast := make([]byte, 64<<20)
	defer runtime.KeepAlive(ballast)
	// Warm up (code, heap, the pipes' goroutines), so that the first run
	// measured is not the dearest: without this it read up to 2× the next.
	warm, err := session.New(&session.Config{SweepInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	srv := &tls.Config{Certificates: []tls.Certificate{cert}}
	warm.Install(srv)
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		cli := tlstest.ClientConfig(pool, "localhost", v, &tlstest.SharedCache{})
		for range 200 {
			if _, err := tlstest.PipeHandshake(srv, cli, warm.HandshakeComplete); err != nil {
				b.Fatal(err)
			}
		}
	}
	warm.Close()
	for _, conc := range []int{1, 8} {
		for _, s := range setups {
			for _, k := range sharingKinds {
				b.Run(fmt.Sprintf("conc=%d/sharing=%s/%s", conc, s.name, k.name), func(b *testing.B) {
					benchSharing(b, url, cert, pool, k, conc, s.tweak)
				})
			}
		}
	}
}

// A sharingKind is a kind of handshake BenchmarkSharingCPU measures.
type sharingKind struct {
	name    string
	version uint16
	resume  bool   // the clients resume their newest session; else full handshakes
	shares  uint64 // new sessions per handshake, each shared
}

// sharingPause is how long the one client of BenchmarkSharingCPU's conc=1
// runs pauses after each handshake: long enough for the farm to share the
// handshake's session before the next one.
var sharingPause = time.Millisecond

var sharingKinds = []sharingKind{
	{"tls=1.2/kind=resumed", tls.VersionTLS12, true, 0},
	{"tls=1.2/kind=full", tls.VersionTLS12, false, 1},
	{"tls=1.3/kind=resumed", tls.VersionTLS13, true, 1},
}

func benchSharing(b *testing.B, url string, cert tls.Certificate, pool *x509.CertPool, k sharingKind, conc int, tweak func(*farm.Config)) {
	var cache *session.Cache
	f := &sharingFarm{}
	if tweak == nil {
		var err error
		if cache, err = session.New(&session.Config{SweepInterval: -1}); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { cache.Close() })
	} else {
		name, secret := redistest.Farm(b), farm.NewSecret(1)
		redistest.CleanFarm(b, url, name)
		var cfg farm.Config
		tweak(&cfg)
		f.storeOnly = cfg.Mode == farm.StoreOnly
		cache, f.sender = benchNode(b, url, name, secret, tweak)
		for range 2 {
			_, n := benchNode(b, url, name, secret, tweak)
			f.peers = append(f.peers, n)
		}
		// benchNode waited for each; none may have dropped since: a node
		// cut off from the farm would issue fallback tickets.
		for _, n := range append([]*farm.Node{f.sender}, f.peers...) {
			if !n.Connected() {
				b.Fatal("a node is not connected to the farm")
			}
		}
	}
	f.cache = cache
	srv := &tls.Config{Certificates: []tls.Certificate{cert}}
	carry := false
	if tweak != nil {
		var cfg farm.Config
		tweak(&cfg)
		carry = cfg.CarrySessions
	}
	f.carry = carry
	if carry {
		// Carried tickets are sealed under the farm's ticket keys: A
		// rotates them with the farm, and issues carried tickets once
		// it has them.
		ring, err := ticket.NewRing(ticket.RingConfig{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			b.Fatal(err)
		}
		ring.Register(srv)
		rot, err := f.sender.RotateTicketKeys(context.Background(), farm.RotationConfig{Ring: ring, Interval: time.Hour})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { rot.Close() })
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = rot.WaitReady(ctx)
		cancel()
		if err != nil {
			b.Fatal(err)
		}
	}
	cache.Install(srv)

	// One client per concurrent handshake. A resuming client keeps its
	// newest ticket; its first session comes from a full handshake now.
	base := f.snapshot()
	clients := make([]*tls.Config, conc)
	for i := range clients {
		if !k.resume {
			clients[i] = tlstest.ClientConfig(pool, "localhost", k.version, tlstest.NoResume{})
			continue
		}
		sc := &tlstest.SharedCache{}
		clients[i] = tlstest.ClientConfig(pool, "localhost", k.version, sc)
		if _, err := tlstest.PipeHandshake(srv, clients[i], cache.HandshakeComplete); err != nil {
			b.Fatal(err)
		}
		cs, ok := sc.Get("")
		if !ok {
			b.Fatal("the first handshake left the client no session")
		}
		if t, _, err := cs.ResumptionState(); err != nil || len(t) != session.IDLen && !carry {
			b.Fatalf("the first handshake issued a %d-byte ticket, not a cached session's ID (%d bytes): a fallback ticket? (err %v)", len(t), session.IDLen, err)
		}
	}
	// Let the farm take in the first sessions before measuring.
	if k.resume {
		f.wait(b, base, uint64(conc), 0)
	}

	var failed atomic.Bool
	handshake := func(cli *tls.Config) {
		cs, err := tlstest.PipeHandshake(srv, cli, cache.HandshakeComplete)
		switch {
		case err != nil:
			b.Error(err)
		case cs.DidResume != k.resume && !failed.Swap(true):
			b.Errorf("DidResume %v, want %v", cs.DidResume, k.resume)
		}
	}
	b.ReportAllocs()
	base = f.snapshot()
	reissued := farmtest.Counter(cache.Metrics(), "tlsfarm_cache_reissued_total")
	carried := farmtest.Counter(cache.Metrics(), "tlsfarm_cache_carried_total", "result", "issued")
	start := tlstest.Snapshot()
	if conc == 1 {
		for b.Loop() {
			handshake(clients[0])
			time.Sleep(sharingPause)
		}
	} else {
		b.ResetTimer()
		var next atomic.Int64
		var wg sync.WaitGroup
		for _, cli := range clients {
			wg.Go(func() {
				for next.Add(1) <= int64(b.N) {
					handshake(cli)
				}
			})
		}
		wg.Wait()
	}
	b.StopTimer()
	// Count the farm's work too: wait until it is all done.
	made := f.made() - base.made
	if want := k.shares * uint64(b.N); made != want {
		b.Errorf("A made %d new sessions for %d handshakes, want %d", made, b.N, want)
	}
	if k.resume && k.shares == 0 {
		got := farmtest.Counter(cache.Metrics(), "tlsfarm_cache_reissued_total") - reissued
		if carry {
			// Within a second of its issue, a session kept by its
			// resumption is given a carried ticket again.
			got += farmtest.Counter(cache.Metrics(), "tlsfarm_cache_carried_total", "result", "issued") - carried
		}
		if got != uint64(b.N) {
			b.Errorf("%d of %d resumptions got a reissued (or carried) ticket", got, b.N)
		}
	}
	if carry {
		// TLS 1.2 resumptions of sessions over carryAgainAge old get
		// reissued IDs; every new session a carried ticket.
		if got := farmtest.Counter(cache.Metrics(), "tlsfarm_cache_carried_total", "result", "issued") - carried; got < made {
			b.Errorf("A issued %d carried tickets for %d new sessions", got, made)
		}
	}
	var cuts uint64 // every new session of a resumption cuts its parent
	if k.resume {
		cuts = made
	}
	end := f.wait(b, base, made, cuts)
	start.Report(b)
	b.ReportMetric(float64(made)/float64(b.N), "shared/op")
	if m := f.cacheMetrics(); farmtest.Counter(m, "tlsfarm_cache_fallback_tickets_total") != 0 || farmtest.Counter(m, "tlsfarm_cache_tickets_total", "event", "issued") != 0 {
		b.Error("A issued stateless tickets")
	}
	if f.sender == nil {
		return
	}
	// Sessions per bus message a receiver got: how well the sender
	// batched.
	var msgs, sessions uint64
	for i := range f.peers {
		msgs += end.peers[i].msgs - base.peers[i].msgs
		sessions += end.peers[i].sessions - base.peers[i].sessions
	}
	if msgs > 0 && sessions > 0 {
		b.ReportMetric(float64(sessions)/float64(msgs), "sessions/msg")
	}
}

// sharingFarm is the farm of one BenchmarkSharingCPU run: A's cache, and
// A and its peers if there is a farm.
type sharingFarm struct {
	cache     *session.Cache
	sender    *farm.Node
	peers     []*farm.Node
	storeOnly bool
	carry     bool // A carries its sessions in its tickets
}

// farmCounts is what the nodes of a sharingFarm have done so far.
type farmCounts struct {
	made                        uint64 // A's new sessions (A's cache's inserts: A receives none)
	published, stored, cutsSent uint64 // A's sessions published, store writes, cuts sent
	retiresSent                 uint64 // A's retirements sent
	peers                       []peerCounts
}

type peerCounts struct {
	msgs     uint64 // messages received
	sessions uint64 // sessions received
	handled  uint64 // sessions inserted, kept (lazy) or refused: done with
	cuts     uint64 // cuts and retirements received
}

func (f *sharingFarm) cacheMetrics() []metric.Sample { return f.cache.Metrics() }

func (f *sharingFarm) made() uint64 {
	return farmtest.Counter(f.cache.Metrics(), "tlsfarm_cache_inserts_total")
}

func (f *sharingFarm) snapshot() farmCounts {
	c := farmCounts{made: f.made()}
	if f.sender == nil {
		return c
	}
	c.sender(f.sender.Metrics())
	for _, p := range f.peers {
		c.peers = append(c.peers, peerOf(p.Metrics()))
	}
	return c
}

func (c *farmCounts) sender(m []metric.Sample) {
	c.published = farmtest.Counter(m, "tlsfarm_farm_published_total", "kind", "session")
	c.stored = farmtest.Counter(m, "tlsfarm_farm_store_writes_total")
	c.cutsSent = farmtest.Counter(m, "tlsfarm_farm_lifecycle_total", "event", "cut_sent")
	c.retiresSent = farmtest.Counter(m, "tlsfarm_farm_lifecycle_total", "event", "retire_sent")
}

func peerOf(m []metric.Sample) peerCounts {
	return peerCounts{
		msgs:     farmtest.Counter(m, "tlsfarm_farm_messages_received_total"),
		sessions: farmtest.Counter(m, "tlsfarm_farm_received_total", "kind", "session"),
		handled: farmtest.Counter(m, "tlsfarm_farm_inserted_total") + farmtest.Counter(m, "tlsfarm_farm_insert_refused_total") +
			farmtest.Counter(m, "tlsfarm_farm_received_held_total") +
			farmtest.Counter(m, "tlsfarm_farm_lazy_total", "event", "kept"),
		cuts: farmtest.Counter(m, "tlsfarm_farm_lifecycle_total", "event", "cut_received") +
			farmtest.Counter(m, "tlsfarm_farm_lifecycle_total", "event", "retire_received"),
	}
}

// wait waits until the farm has done everything that made new sessions,
// cuts of them grace cuts, since base ask of it, and returns its counters
// then. A first: it has written made sessions and the cut parents' records
// (and, store-only, their child links) to the store, and in broadcast mode
// published the sessions; a session is queued after its parent's cut, so
// it is written in the same batch or a later one. Then the receivers, by
// what A actually sent: B and C have handled every session A published
// and received every cut and retirement, and A has received back every
// message it published (and dropped it). Polling reads the counters every
// 2 ms, so that it adds little CPU to what it measures.
func (f *sharingFarm) wait(b *testing.B, base farmCounts, made, cuts uint64) farmCounts {
	b.Helper()
	if f.sender == nil {
		return base
	}
	stored := made + cuts // the sessions and their cut parents' records
	if f.storeOnly {
		stored += cuts // and the parents' child links
	}
	deadline := time.Now().Add(10 * time.Second)
	var c farmCounts
	for {
		c.sender(f.sender.Metrics())
		done := c.stored-base.stored >= stored
		if f.storeOnly {
			done = done && c.cutsSent-base.cutsSent >= cuts
		} else {
			done = done && c.published-base.published >= made
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("A did not share %d sessions in 10 s: published %d, stored %d records of %d, sent %d cuts",
				made, c.published-base.published, c.stored-base.stored, stored, c.cutsSent-base.cutsSent)
		}
		time.Sleep(2 * time.Millisecond)
	}
	// With carried sessions, a session resumed (and cut) while its own
	// write is in flight is cut in the store again after it (see
	// recutWritten): one more record written.
	if got := c.stored - base.stored; got != stored && !(f.carry && got > stored) {
		b.Errorf("A stored %d records, want %d", got, stored)
	}
	wantPublished, wantCuts := made, uint64(0)
	if f.storeOnly {
		wantPublished, wantCuts = 0, cuts
	}
	if got := c.published - base.published; got != wantPublished {
		b.Errorf("A published %d sessions, want %d", got, wantPublished)
	}
	if got := c.cutsSent - base.cutsSent; got != wantCuts {
		b.Errorf("A sent %d cuts, want %d", got, wantCuts)
	}
	c.peers = make([]peerCounts, len(f.peers))
	for i, p := range f.peers {
		for {
			c.peers[i] = peerOf(p.Metrics())
			d, bp := c.peers[i], base.peers[i]
			if d.handled-bp.handled >= c.published-base.published && d.cuts-bp.cuts >= c.cutsSent-base.cutsSent+c.retiresSent-base.retiresSent {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("peer %d handled %d of %d sessions and %d of %d cuts in 10 s", i,
					d.handled-bp.handled, c.published-base.published, d.cuts-bp.cuts, c.cutsSent-base.cutsSent+c.retiresSent-base.retiresSent)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	return c
}
