package natsbus_test

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus/natsembed"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/logtest"
	"github.com/tlsfarm/tlsfarm/internal/testenv"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/metric"
	"github.com/tlsfarm/tlsfarm/session"
)

// The tests of a NATS server restarted empty: killed, and started again on
// the same port with a new store directory, so that JetStream has lost the
// farm's bucket (sessions, revocations, generation record). The nodes
// find the generation gone and write their sessions back.

// RestartEmpty kills the server and starts it again on the same port with
// an empty store directory: JetStream comes back without any stream.
func (s *natsServer) RestartEmpty() {
	s.tb.Helper()
	s.Kill()
	s.dir = s.tb.TempDir()
	s.Restart()
}

// emptyFarm starts n members on a private nats-server, each behind a
// proxy of its own, with the outage tests' short timeouts and a heal
// interval short enough that a node notices the store restarted empty (and
// writes its sessions back) within a second or two. When the test ends, it
// cuts the proxies before the nodes close.
func emptyFarm(t *testing.T, n int, mode farm.Mode, openssl bool, tweakCache func(*session.Config)) ([]*farmtest.Member, *proxied, *farmtest.Options, string) {
	t.Helper()
	return emptyFarmWith(t, n, mode, openssl, tweakCache, nil)
}

// emptyFarmWith is emptyFarm with farm-wide ticket keys if rotation is
// not nil.
func emptyFarmWith(t *testing.T, n int, mode farm.Mode, openssl bool, tweakCache func(*session.Config), rotation *farm.RotationConfig) ([]*farmtest.Member, *proxied, *farmtest.Options, string) {
	t.Helper()
	p := &proxied{srv: startNATS(t)}
	// The nodes' logs are shown if the test fails: the write-back's
	// steps are logged, and they are what a failure needs explained.
	logs := &logtest.Buffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the nodes' logs:\n%s", logs)
		}
	})
	o := &farmtest.Options{NewTransport: p.transport, Mode: mode, WriteThrough: true, Rotation: rotation,
		CloseServer: openssl, TweakCache: tweakCache,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Tweak: func(c *farm.Config) {
			c.OpTimeout = 300 * time.Millisecond
			c.BreakerCooldown = 500 * time.Millisecond
			c.HealInterval = 300 * time.Millisecond
			// The tests are about what is found, not how fast: a
			// loaded machine must not turn a lookup into a full
			// handshake.
			c.LookupTimeout = 2 * time.Second
		}}
	ms, name := farmtest.Start(t, n, o)
	farmtest.WaitFirstHeal(t, ms...) // or a restart below may go unseen
	t.Cleanup(func() {
		if t.Failed() {
			farmtest.LogStats(t, ms)
		}
	})
	p.cutAtEnd(t)
	return ms, p, o, name
}

// restartEmpty restarts srv empty and waits until every member of ms is
// connected again and n1 (ms[0], which issued the tests' sessions) has
// written its sessions back.
func restartEmpty(t *testing.T, srv *natsServer, ms []*farmtest.Member) {
	t.Helper()
	before, _ := metric.Value(ms[0].Node.Metrics(), "tlsfarm_farm_written_back_total")
	srv.RestartEmpty()
	restarted := time.Now()
	farmtest.WaitConnected(t, ms...)
	connected := time.Since(restarted)
	farmtest.Eventually(t, 15*time.Second, "n1 wrote its sessions back", func() bool {
		v, _ := metric.Value(ms[0].Node.Metrics(), "tlsfarm_farm_written_back_total")
		return v > before
	})
	t.Logf("the members connected %v after the restart; n1 wrote back %v after it",
		connected.Round(time.Millisecond), time.Since(restarted).Round(time.Millisecond))
}

// sniClient returns a TLS 1.3 client for the members' servers that names
// serverName and keeps its session in c.
func sniClient(serverName string, c tls.ClientSessionCache) *tls.Config {
	_, pool := tlstest.SharedCert()
	return tlstest.ClientConfig(pool, serverName, tls.VersionTLS13, c)
}

// refusedSNI returns how many resumptions m's cache refused for their
// server name.
func refusedSNI(m *farmtest.Member) float64 {
	v, _ := metric.Value(m.Cache.Metrics(), "tlsfarm_cache_refusals_total", "reason", "server_name")
	return v
}

// TestPromisesServerNameAfterKVRestartedEmpty: a session issued under
// a.example on n1, held by n2 (broadcast) or only in the store
// (store-only), is refused under b.example on every node after the NATS
// server restarted empty and the nodes wrote their sessions back: n1, n2,
// and n3, which joins then and can only load it from what was written
// back — each refusal the server name binding's (counted as such). The
// session still resumes under a.example on n3 (the control: it was
// written back). With Go's client and with openssl s_client (-sess_out on
// n1, -sess_in on the others).
func TestPromisesServerNameAfterKVRestartedEmpty(t *testing.T) {
	t.Parallel()
	for _, mode := range []farm.Mode{farm.Broadcast, farm.StoreOnly} {
		for _, client := range []string{"go", "openssl"} {
			t.Run(mode.String()+"/"+client, func(t *testing.T) {
				t.Parallel()
				serverNameAfterRestartEmpty(t, mode, client == "openssl")
			})
		}
	}
}

func serverNameAfterRestartEmpty(t *testing.T, mode farm.Mode, openssl bool) {
	ms, p, o, name := emptyFarm(t, 2, mode, openssl, nil)
	ids := farmtest.HandshakeSessions(ms[0].Cache)
	c := &tlstest.FrozenCache{}
	var file string
	if openssl {
		file = tlstest.SessionFile(t)
		tlstest.OpenSSL(t, ms[0].Server.Addr, "-tls1_3", "-servername", "a.example", "-sess_out", file)
	} else {
		tlstest.MustDial(t, ms[0].Server.Addr, sniClient("a.example", c))
	}
	if len(ids()) != 1 {
		t.Fatalf("n1 issued %d sessions for one handshake", len(ids()))
	}
	id := ids()[0]
	farmtest.Eventually(t, 5*time.Second, "the session reached the store", func() bool { return stored(ms[0], id) })
	if mode == farm.Broadcast {
		farmtest.Eventually(t, 5*time.Second, "n2 holds the session", func() bool { return holds(ms[1].Cache, id) })
	}
	// resumes presents the session on m under serverName. A refusal under
	// b.example must be the binding's: m found the session and refused it
	// for its name (else the test would prove nothing).
	resumes := func(m *farmtest.Member, serverName string) bool {
		t.Helper()
		before := refusedSNI(m)
		var ok bool
		if openssl {
			ok = strings.Contains(tlstest.OpenSSL(t, m.Server.Addr, "-tls1_3", "-servername", serverName, "-sess_in", file), "Reused, ")
		} else {
			ok = tlstest.MustDial(t, m.Server.Addr, sniClient(serverName, c)).DidResume
		}
		if serverName != "a.example" && !ok && refusedSNI(m) == before {
			farmtest.LogStats(t, ms)
			t.Fatalf("the session presented on %s under %s was not refused for its server name: the test proves nothing", m.Name, serverName)
		}
		return ok
	}

	restartEmpty(t, p.srv, ms)
	farmtest.Eventually(t, 10*time.Second, "the session written back", func() bool { return stored(ms[0], id) })
	n3 := farmtest.Join(t, "n3", name, *o)
	farmtest.WaitConnected(t, n3)
	all := append(ms, n3)
	for _, m := range all {
		if resumes(m, "b.example") {
			farmtest.LogStats(t, all)
			t.Fatalf("the session issued under a.example resumed under b.example on %s after NATS restarted empty", m.Name)
		}
	}
	if !resumes(n3, "a.example") {
		farmtest.LogStats(t, all)
		t.Fatal("the session did not resume under a.example on n3, which joined after NATS restarted empty")
	}
}

// TestPromisesGraceCutAfterKVRestartedEmpty: n1 issues a parent P and an
// untouched session U; n2 resumes P (TLS 1.3), issuing its child, which
// cuts P to its grace farm-wide — or, "cut-off", everywhere but on n1,
// partitioned from NATS meanwhile, which keeps P whole. Then the NATS
// server restarts empty (n1's partition ends), and the nodes write their
// sessions back; n1, holding P whole, must first learn of the cut from n2
// (its re-send). Past P's grace, P resumes on no node: n1, n2, and n3,
// which joins after the restart and can only load it from what was
// written back; U still resumes on n3 (the control: the write-back
// happened). Broadcast and store-only, with Go's client and with openssl
// s_client (-sess_out on n1, -sess_in on n2 and the others).
func TestPromisesGraceCutAfterKVRestartedEmpty(t *testing.T) {
	t.Parallel()
	for _, mode := range []farm.Mode{farm.Broadcast, farm.StoreOnly} {
		for _, client := range []string{"go", "openssl"} {
			for _, cutOff := range []bool{false, true} {
				name := mode.String() + "/" + client
				if cutOff {
					name += "/cut-off"
				}
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					graceCutAfterRestartEmpty(t, mode, client == "openssl", cutOff)
				})
			}
		}
	}
}

func graceCutAfterRestartEmpty(t *testing.T, mode farm.Mode, openssl, cutOff bool) {
	const grace = 8 * time.Second
	ms, p, o, name := emptyFarm(t, 2, mode, openssl, func(c *session.Config) { c.ResumeGrace = grace })
	ids := farmtest.HandshakeSessions(ms[0].Cache)
	parent, untouched := &tlstest.FrozenCache{}, &tlstest.FrozenCache{}
	var parentFile string
	if openssl {
		parentFile = tlstest.SessionFile(t)
		tlstest.OpenSSL(t, ms[0].Server.Addr, "-tls1_3", "-servername", "localhost", "-sess_out", parentFile)
	} else {
		tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tls.VersionTLS13, parent))
	}
	tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tls.VersionTLS13, untouched))
	if len(ids()) != 2 {
		t.Fatalf("n1 issued %d sessions for two handshakes", len(ids()))
	}
	pid, uid := ids()[0], ids()[1]
	for _, id := range []session.ID{pid, uid} {
		farmtest.Eventually(t, 5*time.Second, "the session reached the store", func() bool { return stored(ms[0], id) })
	}
	if mode == farm.Broadcast {
		farmtest.Eventually(t, 5*time.Second, "n2 holds the sessions", func() bool { return holds(ms[1].Cache, pid) && holds(ms[1].Cache, uid) })
	}
	resumesParent := func(m *farmtest.Member) bool {
		t.Helper()
		if openssl {
			return strings.Contains(tlstest.OpenSSL(t, m.Server.Addr, "-tls1_3", "-servername", "localhost", "-sess_in", parentFile), "Reused, ")
		}
		return resumes(t, m, parent)
	}
	if cutOff {
		p.proxy(0).Cut()
		disconnected(t, ms[0])
	}
	if !resumesParent(ms[1]) {
		t.Fatal("the parent did not resume on n2")
	}
	cut := time.Now()
	if cutOff {
		// The cut reaches the store, not n1.
		farmtest.Eventually(t, 5*time.Second, "n2 wrote its child", func() bool {
			return farmtest.Counter(ms[1].Node.Metrics(), "tlsfarm_farm_store_writes_total") > 0
		})
		p.srv.Kill()
		p.proxy(0).Restore()
		p.srv.dir = t.TempDir()
		p.srv.Restart()
	}

	if cutOff {
		farmtest.WaitConnected(t, ms...)
		farmtest.Eventually(t, 15*time.Second, "n1 wrote its sessions back", func() bool {
			return farmtest.Counter(ms[0].Node.Metrics(), "tlsfarm_farm_written_back_total") > 0
		})
	} else {
		restartEmpty(t, p.srv, ms)
	}
	farmtest.Eventually(t, 10*time.Second, "the untouched session written back", func() bool { return stored(ms[0], uid) })
	t.Logf("written back %v after the cut", time.Since(cut).Round(time.Millisecond))
	if since := time.Since(cut); since >= grace {
		t.Skipf("the restart and write-back took %v, longer than the grace (%v): the machine is too slow for this test", since, grace)
	}
	n3 := farmtest.Join(t, "n3", name, *o)
	farmtest.WaitConnected(t, n3)
	all := append(ms, n3)
	time.Sleep(time.Until(cut.Add(grace + 100*time.Millisecond))) // the grace's end is the promise's own timing
	for _, m := range all {
		if resumesParent(m) {
			farmtest.LogStats(t, all)
			t.Fatalf("the parent resumed on %s past its grace, after NATS restarted empty", m.Name)
		}
	}
	if !resumes(t, n3, untouched) {
		farmtest.LogStats(t, all)
		t.Fatal("the untouched session did not resume on n3, which joined after NATS restarted empty")
	}
}

// TestStoreWorksAfterServerRestartedEmpty: a transport that used the
// farm's buckets finds them gone when the server restarts without its
// store, and makes them anew: reads and writes work again within seconds
// (the record written before is gone). Before, a server without the stream
// answered no direct get and no write, every call timed out, and the
// transport never looked for the buckets again. On the machine's
// nats-server (2.9: records in a bucket of their own) and on an embedded
// current one (per-message TTL).
func TestStoreWorksAfterServerRestartedEmpty(t *testing.T) {
	t.Parallel()
	for _, server := range []string{"process", "embedded"} {
		t.Run(server, func(t *testing.T) {
			t.Parallel()
			var url string
			var restartEmpty func()
			if server == "process" {
				srv := startNATS(t)
				url, restartEmpty = srv.URL(""), srv.RestartEmpty
			} else {
				url, restartEmpty = embeddedRestartable(t)
			}
			storeWorksAfterRestartEmpty(t, url, restartEmpty)
		})
	}
}

// embeddedRestartable starts an in-process nats-server on a fixed port and
// returns its URL and a function that restarts it there with an empty
// store directory.
func embeddedRestartable(t *testing.T) (string, func()) {
	var s *natsembed.Server
	_, again := testenv.OnFreePort(t, func(port int) (err error) {
		s, err = natsembed.Start(&natsembed.Config{Port: port, Dir: t.TempDir(), StartTimeout: testenv.StartTimeout})
		return err
	})
	t.Cleanup(func() { s.Shutdown() })
	return s.URL(), func() { s.Shutdown(); again() }
}

func storeWorksAfterRestartEmpty(t *testing.T, url string, restartEmpty func()) {
	tr := open(t, url, "restart-empty")
	// Each call is bounded, the first generously (it makes the buckets),
	// the later ones as a node's store writes are, so that the restart's
	// timeouts happen.
	put := func(key string, timeout time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		return tr.PutRecords(ctx, transport.Item{Key: key, Value: []byte("v"), TTL: time.Hour})
	}
	if err := put("before", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	restartEmpty()
	restarted := time.Now()
	farmtest.Eventually(t, 10*time.Second, "a write works after the restart", func() bool { return put("after", 500*time.Millisecond) == nil })
	t.Logf("writes work again %v after the restart", time.Since(restarted).Round(time.Millisecond))
	for key, want := range map[string]bool{"before": false, "after": true} {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := tr.GetRecord(ctx, key)
		cancel()
		if got := err == nil; got != want || (err != nil && !errors.Is(err, transport.ErrNotFound)) {
			t.Errorf("GetRecord(%q) after the restart: %v; want found %v", key, err, want)
		}
	}
}

// TestPromisesRevocationAfterKVRestartedEmpty: the members share farm-wide
// ticket keys. n1, partitioned from NATS, issues fallback tickets: one
// resuming a session S it issued before (S's chain), one to a new client
// (the control); then it revokes S (pending), and its partition ends: the
// revocation is applied farm-wide. Then the NATS server restarts empty,
// losing the tombstone and the key set; the nodes write their
// revocations and sessions back. n3, which joins then with an empty cache,
// refuses S and the fallback ticket of its chain, while it resumes the
// control fallback ticket (it shares the farm's keys: the refusal is the
// revocation's), and a session n1 wrote back; n1 and n2 refuse both too.
// Without the revocations' write-back, n3 resumes the chain's fallback
// ticket.
func TestPromisesRevocationAfterKVRestartedEmpty(t *testing.T) {
	t.Parallel()
	for _, mode := range []farm.Mode{farm.Broadcast, farm.StoreOnly} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			revocationAfterRestartEmpty(t, mode)
		})
	}
}

func revocationAfterRestartEmpty(t *testing.T, mode farm.Mode) {
	ms, p, o, name := emptyFarmWith(t, 2, mode, false, nil, &farm.RotationConfig{Interval: time.Hour})
	ids := farmtest.HandshakeSessions(ms[0].Cache)
	revoked, kept := &tlstest.FrozenCache{}, &tlstest.FrozenCache{}
	tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tls.VersionTLS13, revoked))
	tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tls.VersionTLS13, kept)) // for n1 to write back
	if len(ids()) != 2 {
		t.Fatalf("n1 issued %d sessions for two handshakes", len(ids()))
	}
	id := ids()[0]
	for _, x := range ids() {
		farmtest.Eventually(t, 5*time.Second, "the session reached the store", func() bool { return stored(ms[0], x) })
	}

	p.proxy(0).Cut()
	disconnected(t, ms[0])
	chain, control := &tlstest.FrozenCache{}, &tlstest.FrozenCache{}
	if !tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tls.VersionTLS13, handoff{revoked, chain})).DidResume {
		t.Fatal("the session to revoke did not resume on n1 while it was partitioned")
	}
	tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tls.VersionTLS13, control))
	if len(ids()) != 2 {
		t.Fatal("n1 issued cached sessions while partitioned: its tickets are not fallback tickets")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	st, err := ms[0].Node.RevokeSession(ctx, id)
	cancel()
	if err != nil || st != farm.RevokePending {
		t.Fatalf("RevokeSession while partitioned = %v, %v; want pending", st, err)
	}
	p.proxy(0).Restore()
	farmtest.Eventually(t, 10*time.Second, "the revocation applied farm-wide", func() bool {
		v, _ := metric.Value(ms[0].Node.Metrics(), "tlsfarm_farm_pending_revocations")
		return v == 0
	})

	restartEmpty(t, p.srv, ms)
	n3 := farmtest.Join(t, "n3", name, *o)
	farmtest.WaitConnected(t, n3)
	all := append(ms, n3)
	farmtest.Eventually(t, 15*time.Second, "every node on one key set", func() bool {
		st := ms[0].Ring.State()
		for _, m := range all[1:] {
			if o := m.Ring.State(); o.Epoch != st.Epoch || o.Current != st.Current {
				return false
			}
		}
		return true
	})
	for _, m := range all {
		for what, c := range map[string]*tlstest.FrozenCache{"revoked session": revoked, "fallback ticket of the revoked chain": chain} {
			if resumes(t, m, c) {
				farmtest.LogStats(t, all)
				t.Fatalf("the %s resumed on %s after NATS restarted empty", what, m.Name)
			}
		}
	}
	if !resumes(t, n3, control) {
		farmtest.LogStats(t, all)
		t.Fatal("n1's control fallback ticket did not resume on n3, which joined after NATS restarted empty")
	}
	if !resumes(t, n3, kept) {
		farmtest.LogStats(t, all)
		t.Fatal("a session n1 wrote back did not resume on n3")
	}
}

// TestPromisesSingleUseAfterKVRestartedEmpty: single use, broadcast. n2
// holds copies of sessions n1 issued (Go's and openssl's) when its path
// to NATS is cut; meanwhile a client resumes each on n1, which consumes
// it, and the NATS server restarts empty, losing what said so. When n2's
// path is restored it finds the store emptied and writes its sessions
// back: not these (it asks n1 to re-send first), only an untouched one.
// Afterwards the consumed sessions are not in the store and resume on no
// node — n1, n2, nor n3, which joins after — while the untouched one
// resumes on n3.
func TestPromisesSingleUseAfterKVRestartedEmpty(t *testing.T) {
	t.Parallel()
	ms, p, o, name := emptyFarm(t, 2, farm.Broadcast, true, func(c *session.Config) { c.SingleUse = true })
	ids := farmtest.HandshakeSessions(ms[0].Cache)
	used, kept := &tlstest.FrozenCache{}, &tlstest.FrozenCache{}
	tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tls.VersionTLS13, used))
	tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tls.VersionTLS13, kept))
	sess := tlstest.SessionFile(t)
	tlstest.OpenSSL(t, ms[0].Server.Addr, "-tls1_3", "-servername", "localhost", "-sess_out", sess)
	if len(ids()) != 3 {
		t.Fatalf("n1 issued %d sessions for three handshakes", len(ids()))
	}
	usedID, keptID, osslID := ids()[0], ids()[1], ids()[2]
	for _, x := range ids() {
		farmtest.Eventually(t, 5*time.Second, "the session reached the store", func() bool { return stored(ms[0], x) })
		farmtest.Eventually(t, 5*time.Second, "n2 holds the session", func() bool { return holds(ms[1].Cache, x) })
	}
	osslResumes := func(m *farmtest.Member) bool {
		t.Helper()
		return strings.Contains(tlstest.OpenSSL(t, m.Server.Addr, "-tls1_3", "-servername", "localhost", "-sess_in", sess), "Reused, ")
	}

	p.proxy(1).Cut()
	disconnected(t, ms[1])
	if !resumes(t, ms[0], used) {
		t.Fatal("the single-use session did not resume on n1")
	}
	if !osslResumes(ms[0]) {
		t.Fatal("openssl's single-use session did not resume on n1")
	}
	p.srv.RestartEmpty()
	farmtest.WaitConnected(t, ms[0])
	p.proxy(1).Restore()
	farmtest.WaitConnected(t, ms[1])
	farmtest.Eventually(t, 15*time.Second, "n2 wrote its sessions back", func() bool {
		return farmtest.Counter(ms[1].Node.Metrics(), "tlsfarm_farm_written_back_total") > 0
	})
	farmtest.Eventually(t, 10*time.Second, "the untouched session written back", func() bool { return stored(ms[0], keptID) })
	for _, x := range []session.ID{usedID, osslID} {
		if stored(ms[0], x) {
			farmtest.LogStats(t, ms)
			t.Errorf("the store holds a consumed session again (%d written back by n2)",
				farmtest.Counter(ms[1].Node.Metrics(), "tlsfarm_farm_written_back_total"))
		}
	}
	n3 := farmtest.Join(t, "n3", name, *o)
	farmtest.WaitConnected(t, n3)
	all := []*farmtest.Member{n3, ms[0], ms[1]}
	for _, m := range all {
		if resumes(t, m, used) {
			farmtest.LogStats(t, all)
			t.Fatalf("the consumed session resumed again on %s", m.Name)
		}
		if osslResumes(m) {
			farmtest.LogStats(t, all)
			t.Fatalf("openssl's consumed session resumed again on %s", m.Name)
		}
	}
	if !resumes(t, n3, kept) {
		farmtest.LogStats(t, all)
		t.Fatal("the untouched session did not resume on n3")
	}
}
