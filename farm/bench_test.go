package farm_test

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// benchNode is a cache joined to a farm, without a TLS server.
func benchNode(b *testing.B, url, farmName string, secret farm.Secret, tweak func(*farm.Config)) (*session.Cache, *farm.Node) {
	b.Helper()
	cache, err := session.New(&session.Config{SweepInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cache.Close() })
	tr, err := redisbus.Open(url, farmName)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tr.Close() })
	cfg := farm.Config{Farm: farmName, Secrets: []farm.Secret{secret}, Cache: cache, Bus: tr, Store: tr,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if tweak != nil {
		tweak(&cfg)
	}
	node, err := farm.Join(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { node.Close() })
	deadline := time.Now().Add(10 * time.Second)
	for !node.Connected() {
		if time.Now().After(deadline) {
			b.Fatal("node never connected")
		}
		time.Sleep(time.Millisecond)
	}
	return cache, node
}

// sessionState is a real TLS 1.3 server session, serialized.
func sessionState(b *testing.B) []byte {
	cert, pool := tlstest.SharedCert()
	var state []byte
	srv := &tls.Config{Certificates: []tls.Certificate{cert}, WrapSession: func(_ tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
		var err error
		state, err = ss.Bytes()
		return []byte("x"), err
	}}
	if _, err := tlstest.PipeHandshake(srv, tlstest.ClientConfig(pool, "localhost", tls.VersionTLS13, tls.NewLRUClientSessionCache(1)), nil); err != nil {
		b.Fatal(err)
	}
	return state
}

// BenchmarkPropagation measures how long a new session takes to reach a peer
// (inserted on A as by a handshake, present in B's cache), at a steady rate
// of 5000 sessions a second. Run it with -benchtime=20000x (four seconds of
// load); it reports p50 and p99 in microseconds.
func BenchmarkPropagation(b *testing.B) {
	url := redistest.URL(b)
	name, secret := redistest.Farm(b), farm.NewSecret(1)
	a, _ := benchNode(b, url, name, secret, nil)
	bc, bn := benchNode(b, url, name, secret, nil)
	state := sessionState(b)

	var mu sync.Mutex
	sent := map[session.ID]time.Time{}
	var lat []time.Duration
	bc.AddHook(session.EventNew, func(ev session.Event) {
		now := time.Now()
		mu.Lock()
		if t0, ok := sent[ev.ID]; ok {
			lat = append(lat, now.Sub(t0))
		}
		mu.Unlock()
	})
	const rate = 5000
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	rec := session.Record{State: state, ServerName: "localhost", Expires: time.Now().Add(time.Hour)}
	b.ResetTimer()
	for i := 0; i < b.N; {
		<-tick.C
		for range rate / 1000 {
			if i >= b.N {
				break
			}
			id := a.NewID()
			mu.Lock()
			sent[id] = time.Now()
			mu.Unlock()
			a.Insert(id, rec, session.OriginHandshake)
			i++
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(lat)
		mu.Unlock()
		if n >= b.N || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	mu.Lock()
	defer mu.Unlock()
	if len(lat) < b.N {
		b.Fatalf("only %d of %d sessions reached the peer (%+v)", len(lat), b.N, bn.Metrics())
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds()), "max-µs")
}

// BenchmarkPublishThroughput inserts sessions on A as fast as it can and
// reports how many a second reach B.
func BenchmarkPublishThroughput(b *testing.B) {
	url := redistest.URL(b)
	name, secret := redistest.Farm(b), farm.NewSecret(1)
	a, _ := benchNode(b, url, name, secret, func(c *farm.Config) { c.QueueSize = 1 << 20 })
	_, bn := benchNode(b, url, name, secret, nil)
	rec := session.Record{State: sessionState(b), ServerName: "localhost", Expires: time.Now().Add(time.Hour)}
	start := time.Now()
	b.ResetTimer()
	for b.Loop() {
		a.Insert(a.NewID(), rec, session.OriginHandshake)
	}
	deadline := time.Now().Add(30 * time.Second)
	for farmtest.Counter(bn.Metrics(), "tlsfarm_farm_inserted_total") < uint64(b.N) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	got := farmtest.Counter(bn.Metrics(), "tlsfarm_farm_inserted_total")
	b.ReportMetric(float64(got)/time.Since(start).Seconds(), "sessions/s")
	if got < uint64(b.N) {
		b.Fatalf("%d of %d sessions arrived", got, b.N)
	}
}

// BenchmarkHandshakePlugin compares, in one run, handshakes on a server
// whose cache is alone, joined to a farm (async publishing), and joined
// with write-through. Client and server share this process and an
// in-memory pipe; the farm's publisher goroutine and Redis client run in
// the same process, so ns/op includes the plugin's whole CPU cost (Redis's
// own CPU is another process).
func BenchmarkHandshakePlugin(b *testing.B) {
	url := redistest.URL(b)
	cert, pool := tlstest.SharedCert()
	setups := []struct {
		name  string
		tweak func(*farm.Config)
		farm  bool
	}{
		{"none", nil, false},
		{"async", nil, true},
		{"write-through", func(c *farm.Config) { c.WriteThrough = true }, true},
	}
	for _, tv := range versions {
		for _, kind := range []string{"full", "resumed"} {
			for _, s := range setups {
				b.Run("tls="+tv.name+"/kind="+kind+"/plugin="+s.name, func(b *testing.B) {
					var cache *session.Cache
					if s.farm {
						cache, _ = benchNode(b, url, redistest.Farm(b), farm.NewSecret(1), s.tweak)
					} else {
						var err error
						if cache, err = session.New(&session.Config{SweepInterval: -1}); err != nil {
							b.Fatal(err)
						}
						b.Cleanup(func() { cache.Close() })
					}
					srv := &tls.Config{Certificates: []tls.Certificate{cert}}
					cache.Install(srv)
					var cc tls.ClientSessionCache = tlstest.NoResume{}
					if kind == "resumed" {
						frozen := &tlstest.FrozenCache{}
						if _, err := tlstest.PipeHandshake(srv, tlstest.ClientConfig(pool, "localhost", tv.v, frozen), nil); err != nil {
							b.Fatal(err)
						}
						cc = frozen
					}
					cli := tlstest.ClientConfig(pool, "localhost", tv.v, cc)
					b.ReportAllocs()
					cpu := tlstest.ProcessCPU()
					for b.Loop() {
						cs, err := tlstest.PipeHandshake(srv, cli, cache.HandshakeComplete)
						if err != nil {
							b.Fatal(err)
						}
						if cs.DidResume != (kind == "resumed") {
							b.Fatalf("DidResume = %t", cs.DidResume)
						}
					}
					tlstest.ReportCPU(b, cpu)
				})
			}
		}
	}
}

// BenchmarkHitGate measures what the hit gate (hitgate.go) costs each
// cache hit of a handshake while the node's delivery is current: the
// bus's delivery mark, read, and the clock.
func BenchmarkHitGate(b *testing.B) {
	_, node := benchNode(b, redistest.URL(b), redistest.Farm(b), farm.NewSecret(1), nil)
	deadline := time.Now().Add(10 * time.Second)
	for !node.HitsCurrent() {
		if time.Now().After(deadline) {
			b.Fatal("the node's delivery was never current")
		}
		time.Sleep(10 * time.Millisecond)
	}
	b.ReportAllocs()
	lagging := 0
	for b.Loop() {
		if !node.HitsCurrent() {
			lagging++
		}
	}
	b.ReportMetric(float64(lagging)/float64(b.N), "lagging/op")
}
