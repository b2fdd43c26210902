package session_test

import (
	"crypto/tls"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// realState returns the serialized state of a real TLS session of the given
// version, issued for "localhost" without a client certificate.
func realState(tb testing.TB, version uint16) []byte {
	tb.Helper()
	cert, pool := tlstest.SharedCert()
	var state []byte
	srv := &tls.Config{Certificates: []tls.Certificate{cert}, WrapSession: func(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
		b, err := ss.Bytes()
		state = b
		return []byte("ticket"), err
	}}
	cli := tlstest.ClientConfig(pool, "localhost", version, tls.NewLRUClientSessionCache(1))
	if _, err := tlstest.PipeHandshake(srv, cli, nil); err != nil {
		tb.Fatal(err)
	}
	if state == nil {
		tb.Fatal("no session was issued")
	}
	return state
}

// filled returns a cache holding n sessions and their IDs.
func filled(tb testing.TB, n int, state []byte) (*session.Cache, []session.ID) {
	c := newCache(tb, &session.Config{Capacity: 2 * n, SweepInterval: -1})
	ids := make([]session.ID, n)
	exp := time.Now().Add(time.Hour)
	for i := range ids {
		ids[i] = c.NewID()
		if err := c.Insert(ids[i], session.Record{State: state, ServerName: "localhost", Expires: exp}, session.OriginAPI); err != nil {
			tb.Fatal(err)
		}
	}
	return c, ids
}

func BenchmarkCheckID(b *testing.B) {
	c := newCache(b, nil)
	id := c.NewID()
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := c.CheckID(id[:]); !ok {
			b.Fatal("rejected")
		}
	}
}

// BenchmarkUnwrapForged is the handshake path's ID check: an identity whose
// tag is wrong is refused before any lookup.
func BenchmarkUnwrapForged(b *testing.B) {
	c := newCache(b, nil)
	id := tamper(c.NewID())
	cfg := &tls.Config{}
	c.Install(cfg)
	b.ReportAllocs()
	for b.Loop() {
		cfg.UnwrapSession(id[:], tls.ConnectionState{})
	}
}

func BenchmarkParseSessionState(b *testing.B) {
	state := realState(b, tls.VersionTLS13)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tls.ParseSessionState(state); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkNewID(b *testing.B) {
	c := newCache(b, nil)
	b.ReportAllocs()
	for b.Loop() {
		c.NewID()
	}
}

func BenchmarkCache(b *testing.B) {
	state := realState(b, tls.VersionTLS13)
	n := benchN
	c, ids := filled(b, n, state)
	buf := make([]byte, 512)
	b.Run("Get", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, ok := c.Get(ids[i&(n-1)]); !ok {
				b.Fatal("miss")
			}
			i++
		}
	})
	b.Run("GetBuffer", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, ok := c.GetBuffer(ids[i&(n-1)], buf); !ok {
				b.Fatal("miss")
			}
			i++
		}
	})
	b.Run("GetMiss", func(b *testing.B) {
		miss := c.NewID()
		b.ReportAllocs()
		for b.Loop() {
			c.GetBuffer(miss, buf)
		}
	})
	b.Run("Insert", func(b *testing.B) {
		ic := newCache(b, &session.Config{SweepInterval: -1})
		fresh := make([]session.ID, n)
		for i := range fresh {
			fresh[i] = ic.NewID()
		}
		r := session.Record{State: state, ServerName: "localhost", Expires: time.Now().Add(time.Hour)}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			ic.Insert(fresh[i&(n-1)], r, session.OriginAPI)
			i++
		}
	})
	b.Run("GetParallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := int(time.Now().UnixNano())
			for pb.Next() {
				c.Get(ids[i&(n-1)])
				i++
			}
		})
	})
	b.Run("GetBufferParallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			buf := make([]byte, 512)
			i := int(time.Now().UnixNano())
			for pb.Next() {
				c.GetBuffer(ids[i&(n-1)], buf)
				i++
			}
		})
	})
	b.Run("InsertParallel", func(b *testing.B) {
		ic := newCache(b, &session.Config{SweepInterval: -1})
		r := session.Record{State: state, ServerName: "localhost", Expires: time.Now().Add(time.Hour)}
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				ic.Insert(ic.NewID(), r, session.OriginAPI)
			}
		})
	})
}

// BenchmarkHooks measures an insert with no hook, and with one trivial hook
// on every event, so the difference is the cost of dispatch.
func BenchmarkHooks(b *testing.B) {
	state := realState(b, tls.VersionTLS13)
	for _, hooks := range []int{0, 1} {
		b.Run(fmt.Sprintf("op=InsertGet/hooks=%d", hooks), func(b *testing.B) {
			c := newCache(b, &session.Config{SweepInterval: -1})
			var seen int
			for range hooks {
				c.AddHook(session.EventNew|session.EventGet|session.EventRemove, func(ev session.Event) { seen++ })
			}
			id := c.NewID()
			r := session.Record{State: state, ServerName: "localhost", Expires: time.Now().Add(time.Hour)}
			buf := make([]byte, 512)
			b.ReportAllocs()
			for b.Loop() {
				c.Insert(id, r, session.OriginAPI)
				c.GetBuffer(id, buf)
			}
		})
	}
}

// BenchmarkHandshake compares, in one run, full and resumed handshakes with
// Go's own stateless tickets, with the cache (stateful), and with the
// cache's glue issuing stateless tickets, for TLS 1.2 and 1.3. Client and
// server run in this process over an in-memory pipe, so ns/op is the CPU of
// both ends; the client's share is the same in every column.
func BenchmarkHandshake(b *testing.B) {
	cert, pool := tlstest.SharedCert()
	type setup struct {
		name string
		make func() (*tls.Config, func(*tls.Conn))
	}
	setups := []setup{
		{"go-tickets", func() (*tls.Config, func(*tls.Conn)) {
			cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
			cfg.SetSessionTicketKeys([][32]byte{{1}})
			return cfg, nil
		}},
		{"stateful", func() (*tls.Config, func(*tls.Conn)) {
			c := newCache(b, &session.Config{SweepInterval: -1})
			cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
			c.Install(cfg)
			return cfg, c.HandshakeComplete
		}},
		{"stateful-carry", func() (*tls.Config, func(*tls.Conn)) {
			// Tickets that carry their session (SetCarry): one more
			// EncryptTicket per issued ticket; a resumption here hits
			// the cache and opens nothing.
			c := newCache(b, &session.Config{SweepInterval: -1})
			c.SetCarry(true)
			cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
			cfg.SetSessionTicketKeys([][32]byte{{1}})
			c.Install(cfg)
			return cfg, c.HandshakeComplete
		}},
		{"stateless-glue", func() (*tls.Config, func(*tls.Conn)) {
			c := newCache(b, &session.Config{SweepInterval: -1, Mode: session.Stateless})
			cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
			cfg.SetSessionTicketKeys([][32]byte{{1}})
			c.Install(cfg)
			return cfg, c.HandshakeComplete
		}},
	}
	for _, tv := range versions {
		for _, kind := range []string{"full", "resumed"} {
			for _, s := range setups {
				b.Run("tls="+tv.name+"/kind="+kind+"/impl="+s.name, func(b *testing.B) {
					srv, done := s.make()
					var cache tls.ClientSessionCache
					if kind == "resumed" {
						frozen := &tlstest.FrozenCache{}
						if _, err := tlstest.PipeHandshake(srv, tlstest.ClientConfig(pool, "localhost", tv.v, frozen), done); err != nil {
							b.Fatal(err)
						}
						cache = frozen
					} else {
						cache = tlstest.NoResume{}
					}
					cli := tlstest.ClientConfig(pool, "localhost", tv.v, cache)
					b.ReportAllocs()
					cpu := tlstest.ProcessCPU()
					for b.Loop() {
						cs, err := tlstest.PipeHandshake(srv, cli, done)
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

// BenchmarkMemoryPerSession reports the heap held per cached TLS 1.3
// session (SNI "localhost", no client certificate) with 100k sessions.
func BenchmarkMemoryPerSession(b *testing.B) {
	for b.Loop() {
		per := memoryPerSession(b, 100_000)
		b.ReportMetric(per, "bytes/session")
	}
}

func memoryPerSession(tb testing.TB, n int) float64 {
	state := realState(tb, tls.VersionTLS13)
	c := newCache(tb, &session.Config{Capacity: n, SweepInterval: -1})
	ids := make([]session.ID, n)
	for i := range ids {
		ids[i] = c.NewID()
	}
	exp := time.Now().Add(time.Hour)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for _, id := range ids {
		s := append([]byte(nil), state...) // each session has its own state, as from a handshake
		if err := c.Insert(id, session.Record{State: s, ServerName: "localhost", Expires: exp}, session.OriginAPI); err != nil {
			tb.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(ids)
	if got := stats(c).Size; got != uint64(n) {
		tb.Fatalf("cache holds %d sessions, want %d", got, n)
	}
	return float64(after.HeapAlloc-before.HeapAlloc) / float64(n)
}

func TestMemoryPerSession(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates 100k sessions")
	}
	per := memoryPerSession(t, 100_000)
	t.Logf("%.0f bytes per cached TLS 1.3 session", per)
	if per > 300 {
		t.Fatalf("%.0f bytes per cached session, want at most 300", per)
	}
}

var benchN = func() int {
	if v := os.Getenv("BENCH_N"); v != "" {
		n, _ := strconv.Atoi(v)
		return n
	}
	return 1 << 16
}()

// BenchmarkPerHandshakeConfig measures what Install adds to every
// handshake to link its two crypto/tls calls: one GetConfigForClient call
// that clones the config and binds two closures.
func BenchmarkPerHandshakeConfig(b *testing.B) {
	cert, _ := tlstest.SharedCert()
	c := newCache(b, &session.Config{SweepInterval: -1})
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}}
	c.Install(cfg)
	hello := &tls.ClientHelloInfo{ServerName: "localhost"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := cfg.GetConfigForClient(hello); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRemoveChains measures revoking 100, 10,000 and 100,000 chains, none
// of which holds a session, in a cache of 100,000 sessions: with one
// RemoveChains call (batch), and with one RemoveChain call for each chain
// (loop), as a node applying the farm's revocations did. Every iteration
// revokes the same chains again: the clock has moved past the previous
// revocations, which have lapsed. The loop costs a pass over the cache for
// each chain: run its larger counts with -benchtime=1x.
func BenchmarkRemoveChains(b *testing.B) {
	const sessions = 100000
	clk := newClock()
	c := newCache(b, &session.Config{Capacity: 2 * sessions, SweepInterval: -1, Now: clk.Now})
	r := session.Record{State: []byte("state"), ServerName: "localhost", Expires: clk.Now().Add(time.Hour)}
	for range sessions {
		if err := c.Insert(c.NewID(), r, session.OriginAPI); err != nil {
			b.Fatal(err)
		}
	}
	for _, chains := range []int{100, 10000, 100000} {
		revs := func(yield func(uint64, time.Time) bool) {
			until := clk.Now().Add(time.Minute)
			for i := range chains {
				// Session chains are random: 1 to chains hold none.
				if !yield(uint64(i)+1, until) {
					return
				}
			}
		}
		b.Run(fmt.Sprintf("chains=%d/batch", chains), func(b *testing.B) {
			for b.Loop() {
				clk.Advance(2 * time.Minute)
				c.RemoveChains(revs, session.OriginPeer)
			}
		})
		b.Run(fmt.Sprintf("chains=%d/loop", chains), func(b *testing.B) {
			for b.Loop() {
				clk.Advance(2 * time.Minute)
				for chain, until := range revs {
					c.RemoveChain(chain, until, session.OriginPeer)
				}
			}
		})
	}
}
