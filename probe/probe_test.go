package probe_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"math"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/probe"
)

// A testFarm is a set of real TLS servers on loopback sockets, presenting
// one certificate, and what they saw.
type testFarm struct {
	addrs   []string
	servers []*tlstest.Server
	resumed atomic.Int64 // handshakes the servers resumed

	mu  sync.Mutex
	log []string // server names, in the order their handshakes completed
}

// startFarm starts n servers, named "a", "b", .... With sharedKeys they
// share one session ticket key and resume each other's sessions; otherwise
// each has a key of its own, like Go servers left to their defaults.
func startFarm(t *testing.T, n int, sharedKeys bool) *testFarm {
	t.Helper()
	cert, _ := tlstest.SharedCert()
	f := &testFarm{}
	shared := [32]byte{'t', 'l', 's', 'f', 'a', 'r', 'm'}
	for i := range n {
		key := shared
		if !sharedKeys {
			rand.Read(key[:])
		}
		cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
		cfg.SetSessionTicketKeys([][32]byte{key})
		name := string(rune('a' + i))
		s := tlstest.Serve(t, name, cfg, func(c *tls.Conn) {
			if c.ConnectionState().DidResume {
				f.resumed.Add(1)
			}
			f.mu.Lock()
			f.log = append(f.log, name)
			f.mu.Unlock()
		})
		f.addrs = append(f.addrs, s.Addr)
		f.servers = append(f.servers, s)
	}
	return f
}

// ended returns the number of connections the servers saw the client close
// after their line: connections the client has finished.
func (f *testFarm) ended() int {
	n := 0
	for _, s := range f.servers {
		n += s.Ended()
	}
	return n
}

// open returns the number of connections open on the servers.
func (f *testFarm) open() int {
	n := 0
	for _, s := range f.servers {
		n += s.Open()
	}
	return n
}

func (f *testFarm) order() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.log)
}

// config returns a probe configuration that trusts the farm's certificate.
func (f *testFarm) config() probe.Config {
	_, pool := tlstest.SharedCert()
	return probe.Config{Targets: f.addrs, RootCAs: pool, Timeout: 5 * time.Second}
}

// checkSums checks the invariants every report keeps: each connection is
// full, resumed or failed, and the total is the sum of the targets.
func checkSums(t *testing.T, rep *probe.Report) {
	t.Helper()
	var sum probe.Stats
	for _, s := range append(slices.Clone(rep.Targets), rep.Total) {
		if s.Connections != s.Full+s.Resumed+s.Failed {
			t.Errorf("%s: %d connections != %d full + %d resumed + %d failed", s.Target, s.Connections, s.Full, s.Resumed, s.Failed)
		}
		if s.Resumed+s.OfferFailed > s.Offered || s.CrossNode > s.Resumed || s.OfferFailed > s.Failed {
			t.Errorf("%s: resumed %d, offered %d (%d failed), cross-node %d, failed %d", s.Target, s.Resumed, s.Offered, s.OfferFailed, s.CrossNode, s.Failed)
		}
		if s.FullLatency.Connect.Count != s.Full || s.ResumedLatency.Connect.Count != s.Resumed ||
			s.FullLatency.Handshake.Count != s.Full || s.ResumedLatency.Handshake.Count != s.Resumed {
			t.Errorf("%s: latency counts %+v %+v for %d full, %d resumed", s.Target, s.FullLatency, s.ResumedLatency, s.Full, s.Resumed)
		}
		for _, l := range []probe.Latency{s.FullLatency, s.ResumedLatency} {
			if l.Connect.Count > 0 && (l.Connect.P50 <= 0 || l.Connect.P50 > l.Connect.P90 || l.Connect.P90 > l.Connect.P99 || l.Connect.P99 > l.Connect.Max || l.Handshake.Max > l.Connect.Max) {
				t.Errorf("%s: latency out of order: %+v", s.Target, l)
			}
		}
	}
	for _, s := range rep.Targets {
		sum.Connections += s.Connections
		sum.Full += s.Full
		sum.Resumed += s.Resumed
		sum.Failed += s.Failed
		sum.Offered += s.Offered
		sum.OfferFailed += s.OfferFailed
		sum.CrossNode += s.CrossNode
	}
	tot := rep.Total
	if sum.Connections != tot.Connections || sum.Full != tot.Full || sum.Resumed != tot.Resumed ||
		sum.Failed != tot.Failed || sum.Offered != tot.Offered || sum.CrossNode != tot.CrossNode ||
		sum.OfferFailed != tot.OfferFailed {
		t.Errorf("targets sum to %+v, total is %+v", sum, tot)
	}
}

func TestResumptionAcrossFarm(t *testing.T) {
	const (
		servers = 3
		conns   = 150
		clients = 3
	)
	type key struct {
		shared  bool
		version uint16
	}
	rates := make(map[key]float64)
	for _, tc := range []struct {
		name string
		key
	}{
		{"SharedKeys/TLS1.2", key{true, tls.VersionTLS12}},
		{"SharedKeys/TLS1.3", key{true, tls.VersionTLS13}},
		{"SeparateKeys/TLS1.2", key{false, tls.VersionTLS12}},
		{"SeparateKeys/TLS1.3", key{false, tls.VersionTLS13}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startFarm(t, servers, tc.shared)
			cfg := f.config()
			cfg.Connections, cfg.Concurrency, cfg.Version = conns, clients, tc.version
			rep, err := probe.Run(context.Background(), cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			checkSums(t, rep)
			tot := rep.Total
			if tot.Connections != conns || tot.Failed != 0 {
				t.Fatalf("%d connections, %d failed (%v); want %d, 0", tot.Connections, tot.Failed, tot.Errors, conns)
			}
			// Each client's first connection has nothing to offer; every
			// later one offers the session of the one before.
			if tot.Offered != conns-clients {
				t.Errorf("offered %d, want %d", tot.Offered, conns-clients)
			}
			if got := f.resumed.Load(); int64(tot.Resumed) != got {
				t.Errorf("report counts %d resumed, servers saw %d", tot.Resumed, got)
			}
			for _, s := range rep.Targets {
				if s.Connections == 0 {
					t.Errorf("random picking never chose %s", s.Target)
				}
			}
			if rep.Version != tls.VersionName(tc.version) {
				t.Errorf("report version %q", rep.Version)
			}
			rates[tc.key] = tot.ResumptionRate
			if tc.shared {
				if tot.Resumed != tot.Offered || tot.ResumptionRate != 1 {
					t.Errorf("shared keys: resumed %d of %d offers (rate %v), want all", tot.Resumed, tot.Offered, tot.ResumptionRate)
				}
				// A session lands on its issuer 1 time in 3.
				if lo, hi := tot.Resumed*2/5, tot.Resumed*9/10; tot.CrossNode < lo || tot.CrossNode > hi {
					t.Errorf("shared keys: %d of %d resumptions cross-node, want %d..%d", tot.CrossNode, tot.Resumed, lo, hi)
				}
				if tot.Full != clients {
					t.Errorf("shared keys: %d full handshakes, want one per client (%d)", tot.Full, clients)
				}
			} else {
				// A session resumes only on its issuer: 1 time in 3.
				if tot.ResumptionRate < 0.15 || tot.ResumptionRate > 0.55 {
					t.Errorf("separate keys: resumption rate %.2f, want about 1/%d", tot.ResumptionRate, servers)
				}
				if tot.CrossNode != 0 {
					t.Errorf("separate keys: %d cross-node resumptions, want 0", tot.CrossNode)
				}
			}
		})
	}
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		shared, okS := rates[key{true, v}]
		separate, okP := rates[key{false, v}]
		if okS && okP && separate > shared/2 {
			t.Errorf("%s: separate keys resume %.2f, shared %.2f; want well below", tls.VersionName(v), separate, shared)
		}
	}
}

func TestRoundRobinPicksInOrder(t *testing.T) {
	for _, tc := range []struct {
		name        string
		sharedKeys  bool
		wantResumed int
	}{
		// Every session was issued by the previous target.
		{"SharedKeys", true, 8},
		{"SeparateKeys", false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startFarm(t, 3, tc.sharedKeys)
			cfg := f.config()
			cfg.Pick, cfg.Connections = probe.PickRoundRobin, 9
			rep, err := probe.Run(context.Background(), cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			checkSums(t, rep)
			want := []string{"a", "b", "c", "a", "b", "c", "a", "b", "c"}
			if got := f.order(); !slices.Equal(got, want) {
				t.Errorf("servers handshook in order %v, want %v", got, want)
			}
			for _, s := range rep.Targets {
				if s.Connections != 3 {
					t.Errorf("%s: %d connections, want 3", s.Target, s.Connections)
				}
			}
			tot := rep.Total
			if tot.Resumed != tc.wantResumed || tot.CrossNode != tc.wantResumed || tot.Offered != 8 {
				t.Errorf("resumed %d, cross-node %d, offered %d; want %d, %d, 8", tot.Resumed, tot.CrossNode, tot.Offered, tc.wantResumed, tc.wantResumed)
			}
		})
	}
}

// TestTLS13ClientMustRead shows why the probe reads after the handshake: a
// TLS 1.3 ticket arrives after it, and a client that never reads never has a
// session to offer.
func TestTLS13ClientMustRead(t *testing.T) {
	f := startFarm(t, 1, true)
	for _, tc := range []struct {
		version     uint16
		request     string
		wantResumed int
	}{
		{tls.VersionTLS13, "", 4},
		{tls.VersionTLS13, probe.RequestRead, 4},
		{tls.VersionTLS13, "HEAD /healthz", 4},
		{tls.VersionTLS13, probe.RequestNone, 0},
		{tls.VersionTLS12, probe.RequestNone, 4}, // the ticket is part of the handshake
	} {
		t.Run(tls.VersionName(tc.version)+"/"+tc.request, func(t *testing.T) {
			cfg := f.config()
			cfg.Connections, cfg.Version, cfg.Request = 5, tc.version, tc.request
			rep, err := probe.Run(context.Background(), cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			checkSums(t, rep)
			if tot := rep.Total; tot.Failed != 0 || tot.Resumed != tc.wantResumed || tot.Offered != tc.wantResumed {
				t.Errorf("failed %d %v, resumed %d, offered %d; want 0, %d, %d", tot.Failed, tot.Errors, tot.Resumed, tot.Offered, tc.wantResumed, tc.wantResumed)
			}
		})
	}
}

// refusedAddr returns a loopback address where nothing listens, held so
// until the test ends (see nettest.Refused: a port merely found free was
// once taken by another test's TLS server, and the "refused" half of
// TestMainThresholds's targets answered).
func refusedAddr(t *testing.T) string {
	t.Helper()
	return nettest.Refused(t)
}

// otherCertAddr returns the address of a TLS server whose certificate the
// probe does not trust.
func otherCertAddr(t *testing.T) string {
	t.Helper()
	cert, _ := tlstest.Cert(t)
	return tlstest.Serve(t, "stranger", &tls.Config{Certificates: []tls.Certificate{cert}}, nil).Addr
}

func TestFailingTargetIsCountedWithoutStalling(t *testing.T) {
	for _, tc := range []struct {
		name     string
		addr     func(*testing.T) string
		wantKind string
	}{
		{"Refused", refusedAddr, probe.FailRefused},
		{"Silent", func(t *testing.T) string { return nettest.Silent(t) }, probe.FailTimeout},
		{"UntrustedCertificate", otherCertAddr, probe.FailCertificate},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startFarm(t, 1, true)
			cfg := f.config()
			cfg.Targets = append(cfg.Targets, tc.addr(t))
			cfg.Pick, cfg.Connections, cfg.Concurrency = probe.PickRoundRobin, 20, 2
			cfg.Timeout = 300 * time.Millisecond
			start := time.Now()
			rep, err := probe.Run(context.Background(), cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			// Ten connections to the bad target, each bounded by the
			// timeout, two at a time (allow for them to run one by one).
			if d := time.Since(start); d > 10*cfg.Timeout+2*time.Second {
				t.Errorf("run took %v", d)
			}
			checkSums(t, rep)
			good, bad := rep.Targets[0], rep.Targets[1]
			if good.Connections != 10 || good.Failed != 0 {
				t.Errorf("good target: %d connections, %d failed (%v); want 10, 0", good.Connections, good.Failed, good.Errors)
			}
			if bad.Connections != 10 || bad.Failed != 10 || bad.Errors[tc.wantKind] != 10 || len(bad.Errors) != 1 {
				t.Errorf("bad target: %d connections, %d failed, errors %v; want 10, 10, %s=10", bad.Connections, bad.Failed, bad.Errors, tc.wantKind)
			}
			if rep.Total.Errors[tc.wantKind] != 10 {
				t.Errorf("total errors %v", rep.Total.Errors)
			}
		})
	}
}

func TestDurationAndRate(t *testing.T) {
	f := startFarm(t, 2, true)
	cfg := f.config()
	cfg.Duration, cfg.Rate, cfg.Concurrency = 400*time.Millisecond, 25, 2
	rep, err := probe.Run(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkSums(t, rep)
	// 25/s for 0.4 s starts about 10 connections.
	if n := rep.Total.Connections; n < 4 || n > 12 {
		t.Errorf("%d connections in %v at 25/s", n, cfg.Duration)
	}
	if rep.Elapsed < cfg.Duration || rep.Elapsed > cfg.Duration+2*time.Second {
		t.Errorf("run took %v for a duration of %v", rep.Elapsed, cfg.Duration)
	}

	cfg.Duration, cfg.Connections, cfg.Rate = 0, 10, 100
	rep, err = probe.Run(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Ten starts 10 ms apart: the last is 90 ms after the first.
	if rep.Total.Connections != 10 || rep.Elapsed < 90*time.Millisecond {
		t.Errorf("%d connections in %v at 100/s", rep.Total.Connections, rep.Elapsed)
	}
}

func TestCancelEndsRunAndKeepsReport(t *testing.T) {
	f := startFarm(t, 1, true)
	cfg := f.config()
	cfg.Targets = append(cfg.Targets, nettest.Silent(t))
	cfg.Duration, cfg.Concurrency, cfg.Pick = time.Minute, 2, probe.PickRoundRobin
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	rep, err := probe.Run(ctx, cfg, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run returned %v, want the context's error", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Run took %v to stop", d)
	}
	checkSums(t, rep)
	// The connections to the silent target were abandoned, not failed.
	if rep.Total.Connections == 0 || rep.Total.Failed != 0 {
		t.Errorf("%d connections, %d failed (%v)", rep.Total.Connections, rep.Total.Failed, rep.Total.Errors)
	}
}

func TestProgress(t *testing.T) {
	f := startFarm(t, 2, true)
	cfg := f.config()
	cfg.Connections, cfg.Concurrency = 30, 3
	var calls [][2]int // only Run's progress goroutine appends
	rep, err := probe.Run(context.Background(), cfg, func(done, total int) {
		calls = append(calls, [2]int{done, total})
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(calls) == 0 || calls[len(calls)-1] != [2]int{30, 30} {
		t.Fatalf("progress calls %v, want the last to be [30 30]", calls)
	}
	for i := 1; i < len(calls); i++ {
		if calls[i][0] < calls[i-1][0] {
			t.Errorf("progress went back: %v", calls)
		}
	}
	if rep.Total.Connections != 30 {
		t.Errorf("%d connections", rep.Total.Connections)
	}
}

// TestProxyProtocol probes a server whose listener requires a PROXY
// protocol header: with Config.ProxyProtocol every connection sends one
// naming its own addresses, and resumes as usual; without it, every
// handshake fails.
func TestProxyProtocol(t *testing.T) {
	cert, pool := tlstest.SharedCert()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pl := &proxyproto.Listener{Listener: ln, ConnPolicy: func(proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) {
		return proxyproto.REQUIRE, nil
	}}
	t.Cleanup(func() { pl.Close() })
	var headers, mismatched atomic.Int64
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	go func() {
		for {
			c, err := pl.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				tc := tls.Server(c, cfg)
				if tc.Handshake() != nil {
					return
				}
				if h := c.(*proxyproto.Conn).ProxyHeader(); h != nil {
					headers.Add(1)
					// The header names the client's side of this very
					// connection, which the raw socket sees too.
					if h.SourceAddr.String() != c.(*proxyproto.Conn).Raw().RemoteAddr().String() {
						mismatched.Add(1)
					}
				}
				tc.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
			}()
		}
	}()
	run := func(pp bool) *probe.Report {
		rep, err := probe.Run(context.Background(), probe.Config{
			Targets: []string{ln.Addr().String()}, RootCAs: pool, Timeout: 5 * time.Second,
			Connections: 20, Concurrency: 2, ProxyProtocol: pp,
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		checkSums(t, rep)
		return rep
	}
	rep := run(true)
	if tot := rep.Total; tot.Failed != 0 || tot.Resumed == 0 || headers.Load() != 20 || mismatched.Load() != 0 {
		t.Errorf("with the header: %d failed, %d resumed, %d headers seen (%d naming another address), want 0 failed, some resumed, 20 headers",
			tot.Failed, tot.Resumed, headers.Load(), mismatched.Load())
	}
	if rep := run(false); rep.Total.Failed != 20 {
		t.Errorf("without the header: %d of 20 connections failed, want all", rep.Total.Failed)
	}
}

func TestRunRejectsBadConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  probe.Config
		want string
	}{
		{"NoTargets", probe.Config{}, "no targets"},
		{"BadTarget", probe.Config{Targets: []string{"[::1"}}, "bad target"},
		{"BadPick", probe.Config{Targets: []string{"a:1"}, Pick: "sticky"}, "unknown pick"},
		{"BadVersion", probe.Config{Targets: []string{"a:1"}, Version: tls.VersionTLS11}, "TLS version"},
		{"NegativeConnections", probe.Config{Targets: []string{"a:1"}, Connections: -1}, "negative"},
		{"NegativeRate", probe.Config{Targets: []string{"a:1"}, Rate: -1}, "negative rate"},
		{"RateNaN", probe.Config{Targets: []string{"a:1"}, Rate: math.NaN()}, "rate is not a number"},
		{"RateTooLow", probe.Config{Targets: []string{"a:1"}, Rate: 1e-10}, "rate 1e-10 is too low"},
		{"BadRequest", probe.Config{Targets: []string{"a:1"}, Request: "GET / HTTP/1.1\r\nX: y"}, "bad request"},
		{"ProxyProtocolOverQUIC", probe.Config{Targets: []string{"a:1"}, HTTP3: true, ProxyProtocol: true}, "PROXY protocol"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep, err := probe.Run(context.Background(), tc.cfg, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "probe: ") {
				t.Errorf("Run: %v, want an error about %q", err, tc.want)
			}
			if rep != nil {
				t.Errorf("Run returned a report with its error")
			}
		})
	}
}

// BenchmarkConnection measures one probe connection, full or resumed, to a
// server in the same process: client and server costs together.
func BenchmarkConnection(b *testing.B) {
	cert, pool := tlstest.SharedCert()
	for _, bc := range []struct {
		name    string
		version uint16
		resume  bool
	}{
		{"TLS1.2/Full", tls.VersionTLS12, false},
		{"TLS1.2/Resumed", tls.VersionTLS12, true},
		{"TLS1.3/Full", tls.VersionTLS13, false},
		{"TLS1.3/Resumed", tls.VersionTLS13, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			cfg := &tls.Config{Certificates: []tls.Certificate{cert}, SessionTicketsDisabled: !bc.resume}
			srv := tlstest.Serve(b, "a", cfg, nil)
			b.ReportAllocs()
			rep, err := probe.Run(context.Background(), probe.Config{
				Targets:     []string{srv.Addr},
				RootCAs:     pool,
				Version:     bc.version,
				Connections: b.N,
			}, nil)
			if err != nil {
				b.Fatal(err)
			}
			if rep.Total.Failed != 0 || bc.resume && rep.Total.Resumed != b.N-1 {
				b.Fatalf("failed %d %v, resumed %d of %d", rep.Total.Failed, rep.Total.Errors, rep.Total.Resumed, b.N)
			}
		})
	}
}

// TestMoreClientsThanConnections: clients that would never connect are
// not started (each took memory: -c 2000000 -n 1 took gigabytes), and the
// report says how many clients ran.
func TestMoreClientsThanConnections(t *testing.T) {
	f := startFarm(t, 1, false)
	cfg := f.config()
	cfg.Connections, cfg.Concurrency = 3, 100000
	rep, err := probe.Run(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Concurrency != 3 || rep.Total.Connections != 3 || rep.Total.Failed != 0 {
		t.Errorf("report of %d clients, %d connections, %d failed; want 3 clients, 3 connections, none failed",
			rep.Concurrency, rep.Total.Connections, rep.Total.Failed)
	}
}
