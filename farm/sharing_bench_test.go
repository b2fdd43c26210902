package farm_test

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// BenchmarkSharingCPU measures what sharing costs per handshake, sender and
// receivers together: node A of a three-node farm serves resumed TLS 1.2
// handshakes (client and server over an in-memory pipe), and B and C
// receive every session A issues. All three nodes, their Redis clients and
// the client run in this process, so cpu-µs/op is the CPU of one handshake
// plus all the farm work it causes (not Redis's own, another process).
// sharing=none is the same handshake on a cache alone: the difference is
// the cost of sharing. conc=1 is one handshake at a time (every session its
// own batch, as on a lightly loaded node); conc=8, eight at once.
func BenchmarkSharingCPU(b *testing.B) {
	url := redistest.URL(b)
	cert, pool := tlstest.SharedCert()
	setups := []struct {
		name  string
		tweak func(*farm.Config) // nil: no farm
	}{
		{"none", nil},
		{"async", func(*farm.Config) {}},
		{"write-through", func(c *farm.Config) { c.WriteThrough = true }},
		{"write-through-lazy", func(c *farm.Config) { c.WriteThrough, c.LazyPeers = true, true }},
		{"store-only-write-through", func(c *farm.Config) { c.WriteThrough, c.Mode = true, farm.StoreOnly }},
	}
	for _, conc := range []int{1, 8} {
		for _, s := range setups {
			b.Run("conc="+itoa(conc)+"/sharing="+s.name, func(b *testing.B) {
				var cache *session.Cache
				var peers []*farm.Node
				if s.tweak == nil {
					var err error
					if cache, err = session.New(&session.Config{SweepInterval: -1}); err != nil {
						b.Fatal(err)
					}
					b.Cleanup(func() { cache.Close() })
				} else {
					name, secret := redistest.Farm(b), farm.NewSecret(1)
					cache, _ = benchNode(b, url, name, secret, s.tweak)
					for range 2 {
						_, n := benchNode(b, url, name, secret, s.tweak)
						peers = append(peers, n)
					}
				}
				srv := &tls.Config{Certificates: []tls.Certificate{cert}}
				cache.Install(srv)
				frozen := &tlstest.FrozenCache{}
				if _, err := tlstest.PipeHandshake(srv, tlstest.ClientConfig(pool, "localhost", tls.VersionTLS12, frozen), nil); err != nil {
					b.Fatal(err)
				}
				cli := tlstest.ClientConfig(pool, "localhost", tls.VersionTLS12, frozen)
				handshake := func() {
					cs, err := tlstest.PipeHandshake(srv, cli, cache.HandshakeComplete)
					if err != nil {
						b.Error(err)
					} else if !cs.DidResume {
						b.Error("did not resume")
					}
				}
				b.ReportAllocs()
				start := tlstest.Snapshot()
				if conc == 1 {
					for b.Loop() {
						handshake()
					}
				} else {
					b.SetParallelism(max(1, conc/2)) // GOMAXPROCS is 2 here
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							handshake()
						}
					})
				}
				// Count the receivers' work too: wait until they have it all.
				deadline := time.Now().Add(10 * time.Second)
				for _, p := range peers {
					for {
						st := p.Metrics()
						if farmtest.Counter(st, "tlsfarm_farm_received_total", "kind", "session") >= uint64(b.N) || farmtest.Counter(st, "tlsfarm_farm_messages_received_total") == 0 && farmtest.Counter(st, "tlsfarm_farm_lookups_total") == 0 || time.Now().After(deadline) {
							break
						}
						time.Sleep(time.Millisecond)
					}
				}
				start.Report(b)
				// Sessions per bus message a receiver got: how well the
				// sender batched.
				var msgs, sessions uint64
				for _, p := range peers {
					st := p.Metrics()
					msgs += farmtest.Counter(st, "tlsfarm_farm_messages_received_total")
					sessions += farmtest.Counter(st, "tlsfarm_farm_received_total", "kind", "session")
				}
				if msgs > 0 {
					b.ReportMetric(float64(sessions)/float64(msgs), "sessions/msg")
				}
			})
		}
	}
}

func itoa(n int) string {
	if n < 10 {
		return string(rune('0' + n))
	}
	return itoa(n/10) + string(rune('0'+n%10))
}
