package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus/natsembed"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/testenv"
)

// pauseHandshakeTimeout is limits.handshake_timeout in the tests of a
// paused farm: no handshake may take longer while the store hangs.
const pauseHandshakeTimeout = time.Second

// How a pauseFarm's Redis hangs.
const (
	pauseFrozen  = "frozen"  // behind a nettest.Proxy that holds every byte
	pauseStopped = "sigstop" // the redis-server process stopped (SIGSTOP)
	// pauseNATS is an in-process NATS server (JetStream: bus and store)
	// instead of Redis, frozen behind a nettest.Proxy.
	pauseNATS = "nats-frozen"
	// pauseAMQP is the machine's RabbitMQ (a bus, no store), frozen
	// behind a nettest.Proxy: the broker itself is never stopped.
	pauseAMQP = "amqp-frozen"
)

// A pauseFarm is a farm of daemons on a private redis-server (or NATS
// server) that the test hangs: connections stay open and no byte goes
// through (see pause).
type pauseFarm struct {
	t      *testing.T
	how    string            // pauseFrozen, pauseStopped or pauseNATS
	srv    *redistest.Server // nil for pauseNATS
	proxy  *nettest.Proxy
	url    string // the farm URL, through the proxy
	name   string
	secret string
	cert   string
	key    string
	leaf   *x509.Certificate
	nodes  []*proc

	slowest time.Duration // the longest handshake since the last pause
}

// startPauseFarm starts n daemons (node-1, node-2, ...) on a private Redis
// reached through a proxy, with extra flags, and waits until each is a full
// member of the farm.
func startPauseFarm(t *testing.T, how string, n int, extra ...string) *pauseFarm {
	t.Helper()
	secret, cert, key, leaf := farmFiles(t)
	f := &pauseFarm{t: t, how: how, name: redistest.Farm(t), secret: secret, cert: cert, key: key, leaf: leaf}
	switch how {
	case pauseAMQP:
		u, err := url.Parse(farmtest.ServerURL(t, "RabbitMQ", "TLSFARM_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"))
		if err != nil {
			t.Fatal(err)
		}
		f.proxy = nettest.NewProxy(t, u.Host)
		u.Host = f.proxy.Addr
		u.RawQuery = "heartbeat=1"
		f.url = u.String()
	case pauseNATS:
		ns, err := natsembed.Start(&natsembed.Config{Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(ns.Shutdown)
		f.proxy = nettest.NewProxy(t, strings.TrimPrefix(ns.URL(), "nats://"))
		f.url = "nats://" + f.proxy.Addr
	default:
		f.srv = redistest.Start(t)
		f.proxy = nettest.NewProxy(t, f.srv.Addr())
		f.url = "redis://" + f.proxy.Addr + "/0"
	}
	for range n {
		f.add(extra...)
	}
	return f
}

// add starts one more daemon in the farm and waits until it is a full
// member ("ok" in /healthz).
func (f *pauseFarm) add(extra ...string) *proc {
	f.t.Helper()
	args := append([]string{"-node", fmt.Sprintf("node-%d", len(f.nodes)+1), "-cert", f.cert, "-key", f.key,
		"-farm", f.url, "-farm-secret", f.secret, "-farm-name", f.name,
		"-debug-expose-session-id", "-handshake-timeout", pauseHandshakeTimeout.String()}, extra...)
	p := serveProc(f.t, args, "TLSFARM_ADMIN_TOKEN="+farmToken)
	f.nodes = append(f.nodes, p)
	waitUntil(f.t, 15*time.Second, func() bool { s, c := farmState(f.t, p); return c && s == "ok" },
		"%s did not join the farm", args[1])
	return p
}

// pause hangs the store and waits until every node has found it hung.
func (f *pauseFarm) pause() {
	f.t.Helper()
	if f.how == pauseStopped {
		f.srv.Pause()
	} else {
		f.proxy.Freeze()
	}
	t0 := time.Now()
	for _, p := range f.nodes {
		waitUntil(f.t, 10*time.Second, func() bool { _, c := farmState(f.t, p); return !c },
			"a node did not find the store hung")
	}
	f.t.Logf("every node reported the farm down %v after the store hung", time.Since(t0).Round(time.Millisecond))
	f.slowest = 0
}

// thaw lets the store answer again and waits until every node is a full member
// of the farm again.
func (f *pauseFarm) thaw() {
	f.t.Helper()
	if f.how == pauseStopped {
		f.srv.Resume()
	} else {
		f.proxy.Thaw()
	}
	t0 := time.Now()
	for _, p := range f.nodes {
		waitUntil(f.t, 15*time.Second, func() bool { s, c := farmState(f.t, p); return c && s == "ok" },
			"a node did not come back to the farm after the thaw")
	}
	f.t.Logf("every node reported itself ok %v after the thaw", time.Since(t0).Round(time.Millisecond))
}

// facts makes one request to p with cfg and returns the answer's facts. It
// fails the test if the handshake takes longer than the handshake timeout,
// or fails.
func (f *pauseFarm) facts(p *proc, cfg *tls.Config) facts {
	f.t.Helper()
	raw, err := net.DialTimeout("tcp", p.Listeners[0], 5*time.Second)
	if err != nil {
		f.t.Fatal(err)
	}
	c := tls.Client(raw, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	t0 := time.Now()
	err = c.HandshakeContext(ctx)
	took := time.Since(t0)
	f.slowest = max(f.slowest, took)
	if err != nil {
		c.Close()
		f.t.Fatalf("handshake with %s after %v: %v", p.Listeners[0], took, err)
	}
	if took >= pauseHandshakeTimeout {
		f.t.Errorf("a handshake with %s took %v, limits.handshake_timeout is %v", p.Listeners[0], took, pauseHandshakeTimeout)
	}
	_, body, _ := request(f.t, c, "/")
	var out facts
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		f.t.Fatalf("facts: %v in %q", err, body)
	}
	return out
}

// resumes reports whether the session cfg offers resumes on p.
func (f *pauseFarm) resumes(p *proc, cfg *tls.Config) bool {
	f.t.Helper()
	return f.facts(p, clientWithSessionOf(cfg)).Resumed
}

// checkHealth checks what every node's admin API says: ready in any case
// (a farm outage must not take the farm out of its balancer), and
// "degraded" for the farm's transport while the store hangs.
func (f *pauseFarm) checkHealth(paused bool) {
	f.t.Helper()
	for _, p := range f.nodes {
		if code, body := adminDo(f.t, p, "GET", "/readyz", ""); code != 200 {
			f.t.Errorf("readyz (store paused: %v): %d %s", paused, code, body)
		}
		code, body := adminDo(f.t, p, "GET", "/healthz", "")
		var h struct {
			Status  string
			Reasons []string
			Farm    *struct{ Connected bool }
		}
		if err := json.Unmarshal([]byte(body), &h); err != nil || h.Farm == nil {
			f.t.Fatalf("healthz without farm detail: %s", body)
		}
		down := "farm transport down: serving from the local cache"
		if paused && (code != 200 || h.Status != "degraded" || h.Farm.Connected || !slices.Contains(h.Reasons, down)) {
			f.t.Errorf("healthz while the store is paused: %d %s", code, body)
		}
		if !paused && (code != 200 || h.Status != "ok" || !h.Farm.Connected) {
			f.t.Errorf("healthz after the thaw: %d %s", code, body)
		}
		if got, want := metric(f.t, p, "tlsfarm_farm_connected"), map[bool]float64{true: 0, false: 1}[paused]; got != want {
			f.t.Errorf("tlsfarm_farm_connected = %v (store paused: %v), want %v", got, paused, want)
		}
		if n := metric(f.t, p, `tlsfarm_handshake_failures_total{reason="timeout"}`); n > 0 {
			f.t.Errorf("%v handshakes timed out (store paused: %v)", n, paused)
		}
	}
}

// opensslFacts runs openssl s_client (TLS 1.3, server name localhost)
// against p, offering the session in sessIn if not "", saving the one it
// ends with to sessOut if not "", and returns whether it resumed and the
// facts it was answered.
func opensslFacts(t *testing.T, p *proc, sessIn, sessOut string) (bool, facts) {
	t.Helper()
	path, err := exec.LookPath("openssl")
	if err != nil {
		testenv.Skip(t, "openssl is not installed")
	}
	args := []string{"s_client", "-connect", p.Listeners[0], "-servername", "localhost", "-ign_eof", "-tls1_3"}
	if sessIn != "" {
		args = append(args, "-sess_in", sessIn)
	}
	if sessOut != "" {
		os.Remove(sessOut)
		args = append(args, "-sess_out", sessOut)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stdin = strings.NewReader("GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
	out, err := cmd.CombinedOutput()
	s := redactMasterKey(string(out))
	if err != nil {
		t.Fatalf("openssl s_client %s: %v\n%s", strings.Join(args[1:], " "), err, s)
	}
	var fa facts
	if _, body, ok := strings.Cut(s, "\n{"); ok {
		if body, _, ok = strings.Cut(body, "\n}\n"); ok {
			json.Unmarshal([]byte("{"+body+"}"), &fa)
		}
	}
	if fa.TLSVersion == "" {
		t.Fatalf("openssl s_client %s: no answer in:\n%s", strings.Join(args[1:], " "), s)
	}
	return strings.Contains(s, "\nReused, "), fa
}

// TestDaemonPromisesWhileRedisPaused runs daemons on a Redis that
// hangs — frozen behind a proxy, or stopped with SIGSTOP — with Go's client
// and openssl s_client (-sess_out on node-1, -sess_in on node-2):
//
//   - while Redis hangs, every node stays ready, /healthz says "degraded"
//     with the farm's transport down, and no handshake takes as long as
//     limits.handshake_timeout;
//   - sessions node-1 issued before the pause resume on node-2 in
//     broadcast mode (from node-2's copy); in store-only mode node-2
//     cannot read them, and the client gets a full handshake in time;
//     those node-1 issues during the pause are fallback tickets (no
//     session ID) that resume on node-2, during the pause and after it;
//   - node-1 revokes, through DELETE /sessions/{id} during the pause, a Go
//     client's session (whose chain meanwhile got a fallback ticket on
//     node-1) and openssl's: 202 pending, and refused on node-1 at once;
//     node-2 revokes a third session node-1 issued: 202 where it holds a
//     copy (broadcast), and where it holds none (store-only: the chain is
//     in the hung store) too, queued under the session's ID until the
//     store answers; 200 applied when asked again after the thaw. Once Redis answers, the revocations are applied, and none of
//     the revoked sessions nor the fallback ticket resumes on any node,
//     node-3 (joining after the thaw) included, while an untouched session
//     and the fallback tickets of the pause still do.
func TestDaemonPromisesWhileRedisPaused(t *testing.T) {
	t.Parallel()
	for _, how := range []string{pauseFrozen, pauseStopped} {
		for _, mode := range []string{"broadcast", "store-only"} {
			t.Run(how+"/"+mode, func(t *testing.T) {
				t.Parallel()
				daemonPromisesWhilePaused(t, how, mode)
			})
		}
	}
}

// TestDaemonPromisesWhileNATSFrozen is TestDaemonPromisesWhileRedisPaused
// on a NATS server (JetStream: bus and store) frozen behind a proxy.
func TestDaemonPromisesWhileNATSFrozen(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"broadcast", "store-only"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			daemonPromisesWhilePaused(t, pauseNATS, mode)
		})
	}
}

func daemonPromisesWhilePaused(t *testing.T, how, mode string) {
	f := startPauseFarm(t, how, 2, "-farm-mode", mode)
	n1, n2 := f.nodes[0], f.nodes[1]
	broadcast := mode == "broadcast"
	received := metric(t, n2, `tlsfarm_farm_received_total{kind="session"}`)
	writes := metric(t, n1, "tlsfarm_farm_store_writes_total")

	// Before the pause: a Go client whose session is to resume during
	// the pause, one to revoke, one untouched until after the thaw, and
	// openssl's two.
	early, revoked, control := clientFor("localhost", f.leaf), clientFor("localhost", f.leaf), clientFor("localhost", f.leaf)
	revokedID := f.facts(n1, revoked).SessionID
	elsewhere := clientFor("localhost", f.leaf) // revoked on node-2
	elsewhereID := f.facts(n1, elsewhere).SessionID
	for _, c := range []*tls.Config{early, control} {
		if id := f.facts(n1, c).SessionID; id == "" {
			t.Fatal("node-1 issued no session with the store up")
		}
	}
	sessEarly, sessRevoked := tempFile(t), tempFile(t)
	opensslFacts(t, n1, "", sessEarly)
	_, fr := opensslFacts(t, n1, "", sessRevoked)
	if revokedID == "" || elsewhereID == "" || fr.SessionID == "" {
		t.Fatal("node-1 issued no session with the store up")
	}
	waitUntil(t, 10*time.Second, func() bool { return metric(t, n1, "tlsfarm_farm_store_writes_total") >= writes+6 },
		"node-1's sessions did not reach the store")
	if broadcast {
		waitUntil(t, 10*time.Second, func() bool { return metric(t, n2, `tlsfarm_farm_received_total{kind="session"}`) >= received+6 },
			"node-2 did not receive node-1's sessions")
	}

	f.pause()
	f.checkHealth(true)

	// (a) A session from before the pause resumes on node-2 where node-2
	// holds a copy (broadcast); in store-only mode it cannot be read from
	// the store, and the client gets a full handshake in time (facts
	// checks the time).
	if f.resumes(n2, early) != broadcast {
		t.Errorf("a session node-1 issued before the pause resumed on node-2 while the store was paused: %v, want %v", !broadcast, broadcast)
	}
	if ok, _ := opensslFacts(t, n2, sessEarly, ""); ok != broadcast {
		t.Errorf("openssl's session from node-1 resumed on node-2 (-sess_in) while the store was paused: %v, want %v", ok, broadcast)
	}
	// Sessions made during the pause are fallback tickets that every
	// node accepts.
	fallbacks := metric(t, n1, "tlsfarm_cache_fallback_tickets_total")
	during := clientFor("localhost", f.leaf)
	if fa := f.facts(n1, during); fa.Resumed || fa.SessionID != "" {
		t.Errorf("a new client on node-1 during the pause: resumed %v, session ID issued %v; want a full handshake and a fallback ticket",
			fa.Resumed, fa.SessionID != "")
	}
	sessDuring := tempFile(t)
	opensslFacts(t, n1, "", sessDuring)
	if got := metric(t, n1, "tlsfarm_cache_fallback_tickets_total"); got < fallbacks+2 {
		t.Errorf("tlsfarm_cache_fallback_tickets_total went from %v to %v for two full handshakes during the pause", fallbacks, got)
	}
	if !f.resumes(n2, during) {
		t.Error("a fallback ticket from node-1 did not resume on node-2 during the pause")
	}
	if ok, _ := opensslFacts(t, n2, sessDuring, ""); !ok {
		t.Error("openssl's fallback ticket from node-1 did not resume on node-2 (-sess_in) during the pause")
	}

	// (b) The revoked chain gets a fallback ticket on node-1, then is
	// revoked there.
	chained := clientFor("localhost", f.leaf)
	chained.ClientSessionCache = passOn{from: revoked.ClientSessionCache, to: chained.ClientSessionCache}
	if fa := f.facts(n1, chained); !fa.Resumed || fa.SessionID != "" {
		t.Fatalf("the session to revoke on node-1 during the pause: resumed %v, session ID issued %v; want a resumption and a fallback ticket",
			fa.Resumed, fa.SessionID != "")
	}
	for what, id := range map[string]string{"Go": revokedID, "openssl": fr.SessionID} {
		code, body := adminDo(t, n1, "DELETE", "/sessions/"+id, farmToken)
		if code != 202 || !strings.Contains(body, `"farm": "pending"`) {
			t.Errorf("DELETE of %s's session during the pause: %d %s; want 202 pending", what, code, body)
		}
	}
	if n := metric(t, n1, "tlsfarm_farm_pending_revocations"); n != 2 {
		t.Errorf("tlsfarm_farm_pending_revocations = %v during the pause, want 2", n)
	}
	// A node that holds a copy revokes it as node-1 does; one that holds
	// none (store-only) cannot learn its chain from the hung store: it
	// queues the revocation under the session's ID and asks the store
	// again once it answers (202 pending, in bounded time, never 404; it
	// answered 503 and forgot the revocation before).
	t0 := time.Now()
	code, body := adminDo(t, n2, "DELETE", "/sessions/"+elsewhereID, farmToken)
	if took := time.Since(t0); took > 3*time.Second {
		t.Errorf("DELETE on node-2 during the pause took %v", took)
	}
	if code != 202 || !strings.Contains(body, `"farm": "pending"`) {
		t.Errorf("DELETE on node-2 of a session node-1 issued, during the pause: %d %s; want 202 pending", code, body)
	}
	if broadcast && f.resumes(n2, elsewhere) {
		t.Error("a session node-2 revoked during the pause resumed on node-2")
	}
	for what, c := range map[string]*tls.Config{"revoked session": revoked, "fallback ticket of the revoked chain": chained} {
		if f.resumes(n1, c) {
			t.Errorf("the %s resumed on node-1, which revoked it, during the pause", what)
		}
	}
	if ok, _ := opensslFacts(t, n1, sessRevoked, ""); ok {
		t.Error("openssl's revoked session resumed on node-1, which revoked it, during the pause")
	}
	f.checkHealth(true)
	t.Logf("the slowest Go handshake during the pause took %v", f.slowest)

	f.thaw()
	for _, p := range f.nodes {
		waitUntil(t, 10*time.Second, func() bool { return metric(t, p, "tlsfarm_farm_pending_revocations") == 0 },
			"the revocations were not applied after the thaw")
	}
	f.checkHealth(false)
	n3 := f.add()
	for _, p := range f.nodes {
		for what, c := range map[string]*tls.Config{"revoked session": revoked, "fallback ticket of the revoked chain": chained,
			"session revoked on node-2": elsewhere} {
			if f.resumes(p, c) {
				t.Errorf("the %s resumed on %s after the thaw", what, p.Listeners[0])
			}
		}
		if ok, _ := opensslFacts(t, p, sessRevoked, ""); ok {
			t.Errorf("openssl's revoked session resumed on %s after the thaw", p.Listeners[0])
		}
	}
	// Revoked already by the pending revocation: asked again, it answers
	// applied.
	if code, body := adminDo(t, n2, "DELETE", "/sessions/"+elsewhereID, farmToken); code != 200 || !strings.Contains(body, `"farm": "applied"`) {
		t.Errorf("DELETE on node-2 of a session node-1 issued, after the thaw: %d %s; want 200 applied", code, body)
	}
	for _, p := range []*proc{n2, n3} {
		// A store lookup that misses its deadline on a loaded machine is
		// a full handshake that leaves the session as it was: try again.
		waitUntil(t, 5*time.Second, func() bool { return f.resumes(p, control) },
			"a session untouched since before the pause did not resume on %s after the thaw", p.Listeners[0])
		if !f.resumes(p, during) {
			t.Errorf("a fallback ticket from the pause did not resume on %s after the thaw", p.Listeners[0])
		}
		if ok, _ := opensslFacts(t, p, sessDuring, ""); !ok {
			t.Errorf("openssl's fallback ticket from the pause did not resume on %s after the thaw", p.Listeners[0])
		}
	}
	f.checkHealth(false)
}

// TestDaemonSingleUseWhileRedisPaused runs two daemons with
// cache.single_use (and write-through) on a Redis that hangs — frozen
// behind a proxy, or stopped with SIGSTOP. While it hangs, no single-use
// session resumes anywhere (its take cannot reach the store), no handshake
// takes as long as limits.handshake_timeout, a new client is issued a
// cached session, never a fallback ticket, and every node stays ready.
// After the thaw, no session — presented during the pause or not, made
// before or during it, by Go's client or openssl — resumes more than once
// in the whole farm, and one untouched through the pause resumes exactly
// once.
func TestDaemonSingleUseWhileRedisPaused(t *testing.T) {
	t.Parallel()
	for _, how := range []string{pauseFrozen, pauseStopped} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			singleUseWhilePaused(t, how)
		})
	}
}

// TestDaemonSingleUseWhileNATSFrozen is TestDaemonSingleUseWhileRedisPaused
// on a NATS server (JetStream: bus and store) frozen behind a proxy.
func TestDaemonSingleUseWhileNATSFrozen(t *testing.T) {
	t.Parallel()
	singleUseWhilePaused(t, pauseNATS)
}

func singleUseWhilePaused(t *testing.T, how string) {
	f := startPauseFarm(t, how, 2, "-single-use", "-write-through")
	n1, n2 := f.nodes[0], f.nodes[1]
	writes := metric(t, n1, "tlsfarm_farm_store_writes_total")

	presented, control := clientFor("localhost", f.leaf), clientFor("localhost", f.leaf)
	for _, c := range []*tls.Config{presented, control} {
		if id := f.facts(n1, c).SessionID; id == "" {
			t.Fatal("node-1 issued no session")
		}
	}
	sessPresented := tempFile(t)
	opensslFacts(t, n1, "", sessPresented)
	waitUntil(t, 10*time.Second, func() bool { return metric(t, n1, "tlsfarm_farm_store_writes_total") >= writes+3 },
		"node-1's sessions did not reach the store")

	f.pause()
	f.checkHealth(true)
	resumed := map[string]int{} // resumptions by session, the whole test
	try := func(what string, p *proc, c *tls.Config) {
		t.Helper()
		if f.resumes(p, c) {
			resumed[what]++
		}
	}
	tryOpenSSL := func(what string, p *proc, sess string) {
		t.Helper()
		if ok, _ := opensslFacts(t, p, sess, ""); ok {
			resumed[what]++
		}
	}
	fallbacks := metric(t, n1, "tlsfarm_cache_fallback_tickets_total")
	during := clientFor("localhost", f.leaf)
	if fa := f.facts(n1, during); fa.SessionID == "" {
		t.Error("a new client on node-1 during the pause was not issued a cached session (a fallback ticket under single use?)")
	}
	sessDuring := tempFile(t)
	if _, fa := opensslFacts(t, n1, "", sessDuring); fa.SessionID == "" {
		t.Error("openssl on node-1 during the pause was not issued a cached session")
	}
	if got := metric(t, n1, "tlsfarm_cache_fallback_tickets_total"); got != fallbacks {
		t.Errorf("fallback tickets issued under single use: %v, then %v", fallbacks, got)
	}
	for _, p := range []*proc{n2, n1, n2} {
		try("presented", p, presented)
		tryOpenSSL("openssl presented", p, sessPresented)
		try("during", p, during)
		tryOpenSSL("openssl during", p, sessDuring)
	}
	for what, n := range resumed {
		t.Errorf("the %s session resumed %d times while the store was paused", what, n)
	}
	f.checkHealth(true)
	t.Logf("the slowest Go handshake during the pause took %v", f.slowest)

	f.thaw()
	f.checkHealth(false)
	for _, p := range []*proc{n2, n1, n2, n1} {
		try("presented", p, presented)
		tryOpenSSL("openssl presented", p, sessPresented)
		try("during", p, during)
		tryOpenSSL("openssl during", p, sessDuring)
		try("control", p, control)
	}
	for what, n := range resumed {
		if n > 1 {
			t.Errorf("the single-use %s session resumed %d times", what, n)
		}
	}
	if resumed["control"] != 1 {
		t.Errorf("a single-use session untouched during the pause resumed %d times after it, want once", resumed["control"])
	}
	t.Logf("resumptions after the thaw: %v", resumed)
	f.checkHealth(false)
}

// passOn is a client session cache that offers the sessions of from and
// keeps the ones it is issued in to.
type passOn struct{ from, to tls.ClientSessionCache }

func (p passOn) Get(k string) (*tls.ClientSessionState, bool) { return p.from.Get(k) }
func (p passOn) Put(k string, cs *tls.ClientSessionState)     { p.to.Put(k, cs) }

// TestDaemonPromisesWhileAMQPFrozen runs daemons on the machine's RabbitMQ
// (a bus without a store: broadcast mode, ticket keys each node's own)
// frozen behind a proxy, with a heartbeat of 1 s so that the freeze ends
// the nodes' subscriptions, and with Go's client and openssl s_client
// (-sess_out on node-1, -sess_in on node-2):
//
//   - while the broker hangs, every node stays ready, /healthz says
//     "degraded" with the farm's transport down, and no handshake takes
//     as long as limits.handshake_timeout;
//   - sessions node-1 issued before the freeze resume on node-2 (from its
//     copy); a new client on node-1 gets a full handshake and a cached
//     session (no fallback ticket: no farm-wide keys), which resumes on
//     node-1, and on node-2 once node-1's backlog is published after the
//     thaw;
//   - node-1 revokes a Go client's session and openssl's through DELETE
//     /sessions/{id} during the freeze, node-2 a third session node-1
//     issued (it holds a copy): 202 pending, refused there at once. Once
//     the broker answers, the revocations are applied and none of the
//     revoked sessions resumes on any node, node-3 (joining after the
//     thaw) included;
//   - the broker's queues outlived the connections: each node counts the
//     outage kept, drops nothing, and node-2 still resumes an untouched
//     session;
//   - node-3, which holds no copy of that session and has no store to
//     learn its chain from, answers 503 to its DELETE, never 404 (its
//     peers still resume it); node-1's DELETE applies it, and it then
//     resumes on no node.
func TestDaemonPromisesWhileAMQPFrozen(t *testing.T) {
	t.Parallel()
	f := startPauseFarm(t, pauseAMQP, 2)
	n1, n2 := f.nodes[0], f.nodes[1]
	received := metric(t, n2, `tlsfarm_farm_received_total{kind="session"}`)

	early, revoked, control, elsewhere := clientFor("localhost", f.leaf), clientFor("localhost", f.leaf), clientFor("localhost", f.leaf), clientFor("localhost", f.leaf)
	revokedID := f.facts(n1, revoked).SessionID
	elsewhereID := f.facts(n1, elsewhere).SessionID
	earlyID, controlID := f.facts(n1, early).SessionID, f.facts(n1, control).SessionID
	sessEarly, sessRevoked := tempFile(t), tempFile(t)
	opensslFacts(t, n1, "", sessEarly)
	_, fr := opensslFacts(t, n1, "", sessRevoked)
	if revokedID == "" || elsewhereID == "" || earlyID == "" || controlID == "" || fr.SessionID == "" {
		t.Fatal("node-1 issued no session with the broker up")
	}
	waitUntil(t, 10*time.Second, func() bool { return metric(t, n2, `tlsfarm_farm_received_total{kind="session"}`) >= received+6 },
		"node-2 did not receive node-1's sessions")

	f.pause()
	f.checkHealth(true)

	if !f.resumes(n2, early) {
		t.Error("a session node-1 issued before the freeze did not resume on node-2 (its copy) while the broker was frozen")
	}
	if ok, _ := opensslFacts(t, n2, sessEarly, ""); !ok {
		t.Error("openssl's session from node-1 did not resume on node-2 (-sess_in) while the broker was frozen")
	}
	// Without a store the ticket keys are each node's own: a new client
	// is issued a cached session (no fallback ticket, which would resume
	// on node-1 only), kept in node-1's backlog until the broker answers.
	fallbacks := metric(t, n1, "tlsfarm_cache_fallback_tickets_total")
	during := clientFor("localhost", f.leaf)
	if fa := f.facts(n1, during); fa.Resumed || fa.SessionID == "" {
		t.Errorf("a new client on node-1 during the freeze: resumed %v, session ID issued %v; want a full handshake and a cached session",
			fa.Resumed, fa.SessionID != "")
	}
	if got := metric(t, n1, "tlsfarm_cache_fallback_tickets_total"); got != fallbacks {
		t.Errorf("node-1 issued %v fallback tickets without farm-wide ticket keys", got-fallbacks)
	}
	if !f.resumes(n1, during) {
		t.Error("a session node-1 issued during the freeze did not resume on node-1")
	}
	if f.resumes(n2, during) {
		t.Error("a session node-1 issued during the freeze resumed on node-2 before the broker answered")
	}

	for what, id := range map[string]string{"Go": revokedID, "openssl": fr.SessionID} {
		code, body := adminDo(t, n1, "DELETE", "/sessions/"+id, farmToken)
		if code != 202 || !strings.Contains(body, `"farm": "pending"`) {
			t.Errorf("DELETE of %s's session during the freeze: %d %s; want 202 pending", what, code, body)
		}
	}
	if n := metric(t, n1, "tlsfarm_farm_pending_revocations"); n != 2 {
		t.Errorf("tlsfarm_farm_pending_revocations = %v during the freeze, want 2", n)
	}
	t0 := time.Now()
	code, body := adminDo(t, n2, "DELETE", "/sessions/"+elsewhereID, farmToken)
	if took := time.Since(t0); took > 3*time.Second {
		t.Errorf("DELETE on node-2 during the freeze took %v", took)
	}
	if code != 202 {
		t.Errorf("DELETE on node-2 of a session node-1 issued (node-2 holds a copy), during the freeze: %d %s; want 202", code, body)
	}
	if f.resumes(n2, elsewhere) {
		t.Error("a session node-2 revoked during the freeze resumed on node-2")
	}
	if f.resumes(n1, revoked) {
		t.Error("the revoked session resumed on node-1, which revoked it, during the freeze")
	}
	if ok, _ := opensslFacts(t, n1, sessRevoked, ""); ok {
		t.Error("openssl's revoked session resumed on node-1, which revoked it, during the freeze")
	}
	f.checkHealth(true)
	t.Logf("the slowest Go handshake during the freeze took %v", f.slowest)
	// The heartbeat (1 s here) ends each node's subscription: the outage
	// is one of the bus, not only of its probe.
	for _, p := range f.nodes {
		p.waitLog("farm: lost the bus; serving from the local cache", 10*time.Second)
	}
	f.checkHealth(true)

	receivedFrozen := metric(t, n2, `tlsfarm_farm_received_total{kind="session"}`)
	f.thaw()
	for _, p := range f.nodes {
		waitUntil(t, 10*time.Second, func() bool { return metric(t, p, "tlsfarm_farm_pending_revocations") == 0 },
			"the revocations were not applied after the thaw")
	}
	f.checkHealth(false)
	n3 := f.add()
	for _, p := range f.nodes {
		for what, c := range map[string]*tls.Config{"revoked session": revoked, "session revoked on node-2": elsewhere} {
			if f.resumes(p, c) {
				t.Errorf("the %s resumed on %s after the thaw", what, p.Listeners[0])
			}
		}
		if ok, _ := opensslFacts(t, p, sessRevoked, ""); ok {
			t.Errorf("openssl's revoked session resumed on %s after the thaw", p.Listeners[0])
		}
	}
	for _, p := range []*proc{n1, n2} {
		if kept, dropped := metric(t, p, `tlsfarm_farm_reconciles_total{result="kept"}`), metric(t, p, `tlsfarm_farm_reconciles_total{result="dropped"}`); kept < 1 || dropped != 0 {
			t.Errorf("%s after the thaw: %v outages kept by the broker's queue, %v caches dropped; want the outage kept", p.Listeners[0], kept, dropped)
		}
	}
	if !f.resumes(n2, control) {
		t.Error("a session untouched since before the freeze did not resume on node-2 after the thaw")
	}
	// node-3 joined after the control session was issued and holds no
	// copy; with no store to learn its chain from, it must not answer
	// 404 ("no such session") for a session its peers still resume.
	if code, body := adminDo(t, n3, "DELETE", "/sessions/"+controlID, farmToken); code != 503 {
		t.Errorf("DELETE on node-3 of a session only node-1 and node-2 hold: %d %s; want 503", code, body)
	}
	if !f.resumes(n1, control) {
		t.Error("a DELETE on node-3 that failed revoked the control session on node-1")
	}
	if code, body, ok := deleteApplied(t, n1, controlID); !ok {
		t.Errorf("DELETE on node-1 of its session after the thaw: %d %s; want 200 applied (or 202 pending, then applied)", code, body)
	}
	for _, p := range f.nodes {
		waitUntil(t, 5*time.Second, func() bool { return !f.resumes(p, control) },
			"the session node-1 revoked after the thaw still resumes on %s", p.Listeners[0])
	}
	// The session node-1 issued during the freeze is published from its
	// backlog once the broker answers. Sessions issued since the thaw
	// (the control session's children) may reach node-2 first, so the
	// test waits for the session itself, not for a count.
	thawed := time.Now()
	waitUntil(t, 10*time.Second, func() bool {
		return metric(t, n2, `tlsfarm_farm_received_total{kind="session"}`) > receivedFrozen
	}, "node-2 received none of the sessions node-1 issued during the freeze")
	for deadline := time.Now().Add(10 * time.Second); !f.resumes(n2, during); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			// What became of it: published by node-1, and received,
			// refused or left out by node-2 (a CI run at load 11).
			var b strings.Builder
			for _, c := range []struct {
				p      *proc
				series string
			}{
				{n1, "tlsfarm_farm_published_total"}, {n1, "tlsfarm_farm_unpublished_total"}, {n1, "tlsfarm_farm_backlog_dropped_total"},
				{n1, "tlsfarm_farm_queue_length"}, {n1, "tlsfarm_farm_publish_errors_total"},
				{n2, `tlsfarm_farm_received_total{kind="session"}`}, {n2, "tlsfarm_farm_old_sessions_total"}, {n2, "tlsfarm_farm_gap_sessions_total"},
				{n2, "tlsfarm_farm_insert_refused_total"}, {n2, "tlsfarm_farm_inserted_total"}, {n2, "tlsfarm_farm_young_waits_total"},
			} {
				name := map[*proc]string{n1: "node-1", n2: "node-2"}[c.p]
				fmt.Fprintf(&b, "\n\t%s %s %v", name, c.series, metric(t, c.p, c.series))
			}
			t.Fatalf("a session node-1 issued during the freeze did not resume on node-2 after the thaw:%s", b.String())
		}
	}
	t.Logf("the session node-1 issued during the freeze resumed on node-2 %v after the checks of the thaw", time.Since(thawed).Round(time.Millisecond))
	f.checkHealth(false)
}
