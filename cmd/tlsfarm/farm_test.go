package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// farmFiles writes a farm secret and a certificate for localhost that every
// node of a test farm shares.
func farmFiles(t *testing.T) (secret, cert, key string, leaf *x509.Certificate) {
	t.Helper()
	dir := t.TempDir()
	secret = filepath.Join(dir, "farm.secret")
	if err := farm.WriteSecretFile(secret, farm.NewSecret(0)); err != nil {
		t.Fatal(err)
	}
	cert, key, leaf = writeCert(t, dir, "shared", "localhost")
	return secret, cert, key, leaf
}

// farmState returns the farm part of /healthz.
func farmState(t *testing.T, p *proc) (status string, connected bool) {
	t.Helper()
	_, body := adminDo(t, p, "GET", "/healthz", "")
	var h struct {
		Status string
		Farm   *struct{ Connected bool }
	}
	if err := json.Unmarshal([]byte(body), &h); err != nil || h.Farm == nil {
		t.Fatalf("healthz without farm detail: %s", body)
	}
	return h.Status, h.Farm.Connected
}

// TestStartsDegradedThenJoinsWhenRedisComesUp starts a node while its Redis
// is down: it serves at once, says once that it is degraded, stays ready,
// and joins the farm when Redis comes up.
func TestStartsDegradedThenJoinsWhenRedisComesUp(t *testing.T) {
	t.Parallel()
	redis := redistest.Start(t)
	redis.Kill()
	secret, cert, key, leaf := farmFiles(t)
	p := serveProc(t, []string{"-cert", cert, "-key", key, "-farm", redis.URL(), "-farm-secret", secret, "-farm-name", redistest.Farm(t)})

	client := clientFor("localhost", leaf)
	if f := getFacts(t, p.Listeners[0], client); f.TLSVersion == "" {
		t.Fatalf("no answer while the farm is down: %+v", f)
	}
	if status, connected := farmState(t, p); status != "degraded" || connected {
		t.Errorf("healthz while Redis is down: %s, connected %v", status, connected)
	}
	if code, body := adminDo(t, p, "GET", "/readyz", ""); code != 200 {
		t.Errorf("readyz while Redis is down: %d %s", code, body)
	}
	p.waitLog("farm transport unreachable: serving from the local cache; the node joins the farm when the transport comes back", 10*time.Second)

	redis.Restart()
	waitUntil(t, 15*time.Second, func() bool { _, c := farmState(t, p); return c }, "the node did not join the farm after Redis came up")
	// Connected to the bus comes first; the health probe's next answer and
	// the read of the farm's revocations clear "degraded" a little later.
	waitUntil(t, 5*time.Second, func() bool { s, _ := farmState(t, p); return s == "ok" }, "healthz still degraded after joining")
	getFacts(t, p.Listeners[0], clientFor("localhost", leaf)) // a client with a cache is issued a ticket
	waitUntil(t, 10*time.Second, func() bool { return metric(t, p, `tlsfarm_farm_published_total{kind="session"}`) >= 1 },
		"no session published after joining")
	if n := p.countLog("farm transport unreachable: serving from the local cache; the node joins the farm when the transport comes back"); n != 1 {
		t.Errorf("the outage was logged %d times, want once", n)
	}
	p.stop()
}

// TestThreeNodesShareSessionsOverRedis runs a farm of three daemons on one
// Redis: a session made on any node resumes on the others.
func TestThreeNodesShareSessionsOverRedis(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	secret, cert, key, leaf := farmFiles(t)
	name := redistest.Farm(t)
	var nodes []*proc
	names := []string{"node-a", "node-b", "node-c"}
	for _, n := range names {
		nodes = append(nodes, serveProc(t, []string{"-node", n, "-cert", cert, "-key", key, "-farm", url, "-farm-secret", secret, "-farm-name", name,
			"-debug-expose-session-id"}, "TLSFARM_ADMIN_TOKEN="+farmToken))
	}
	for _, p := range nodes {
		waitUntil(t, 10*time.Second, func() bool { _, c := farmState(t, p); return c }, "a node did not connect to the farm")
	}
	client := clientFor("localhost", leaf)
	for i, from := range nodes {
		to := nodes[(i+1)%len(nodes)]
		f := getFacts(t, from.Listeners[0], client) // a full handshake or a resumption: either way a new session
		if f.Node != names[i] {
			t.Fatalf("reached %s, want %s", f.Node, names[i])
		}
		resumed := false
		for try := 0; try < 50 && !resumed; try++ {
			time.Sleep(20 * time.Millisecond) // broadcast takes about a millisecond
			g := getFacts(t, to.Listeners[0], clientWithSessionOf(client))
			resumed = g.Resumed && g.Node == names[(i+1)%len(nodes)]
		}
		if !resumed {
			t.Errorf("a session from %s did not resume on %s", f.Node, to.Listeners[0])
		}
	}
	if got := metric(t, nodes[1], `tlsfarm_farm_received_total{kind="session"}`); got < 1 {
		t.Errorf("node-b received %v sessions", got)
	}

	// A session revoked on node-c stops resuming on node-b.
	fresh := clientFor("localhost", leaf)
	f := getFacts(t, nodes[0].Listeners[0], fresh)
	waitUntil(t, 5*time.Second, func() bool { return getFacts(t, nodes[1].Listeners[0], clientWithSessionOf(fresh)).Resumed },
		"the session to revoke never resumed on node-b")
	if code, body, ok := deleteApplied(t, nodes[2], f.SessionID); !ok {
		t.Fatalf("DELETE on node-c: %d %s", code, body)
	}
	waitUntil(t, 5*time.Second, func() bool { return !getFacts(t, nodes[1].Listeners[0], clientWithSessionOf(fresh)).Resumed },
		"a session revoked on node-c still resumes on node-b")
	for _, p := range nodes {
		p.stop()
	}
}

const farmToken = "farm-test-admin-token-0123456789"

// clientWithSessionOf returns a config that offers c's cached session
// without changing c's cache, so that retries all offer the same session.
func clientWithSessionOf(c *tls.Config) *tls.Config {
	cs, _ := c.ClientSessionCache.Get(c.ServerName)
	x := c.Clone()
	x.ClientSessionCache = &oneSession{cs: cs}
	return x
}

// oneSession is a client session cache that always offers one session.
type oneSession struct{ cs *tls.ClientSessionState }

func (o *oneSession) Get(string) (*tls.ClientSessionState, bool) { return o.cs, o.cs != nil }
func (o *oneSession) Put(string, *tls.ClientSessionState)        {}

func TestStrictModeRefusesToStartWithoutTheFarm(t *testing.T) {
	t.Parallel()
	redis := redistest.Start(t)
	redis.Kill()
	secret, _, _, _ := farmFiles(t)
	t0 := time.Now()
	code, _, stderr := runCmd(t, []string{"serve", "-listen", "127.0.0.1:0", "-admin", "127.0.0.1:0",
		"-farm", redis.URL(), "-farm-secret", secret, "-strict", "-farm-connect-timeout", "1s"})
	if code == 0 || !strings.Contains(stderr, "farm.strict refuses to start") {
		t.Errorf("exit %d: %s", code, stderr)
	}
	if took := time.Since(t0); took > 10*time.Second {
		t.Errorf("took %v to give up", took)
	}
}

// TestHealthSaysRevocationsUnread starts a node on a Redis whose
// revocation list cannot be read (a value of the wrong type at its key):
// the node serves and is live, /healthz says "degraded" because the
// revocations are not read (its transport is up), and /readyz fails in
// strict mode only. Once the key holds a readable list, the node reads it:
// "ok", and ready.
func TestHealthSaysRevocationsUnread(t *testing.T) {
	t.Parallel()
	redis := redistest.Start(t)
	secret, cert, key, leaf := farmFiles(t)
	for _, strict := range []bool{false, true} {
		t.Run(map[bool]string{false: "default", true: "strict"}[strict], func(t *testing.T) {
			t.Parallel()
			name := redistest.Farm(t)
			rc := goredis.NewClient(&goredis.Options{Addr: redis.Addr()})
			defer rc.Close()
			revoked := "tlsfarm:{" + name + "}:revoked"
			if err := rc.Set(t.Context(), revoked, "not a set", 0).Err(); err != nil {
				t.Fatal(err)
			}
			args := []string{"-cert", cert, "-key", key, "-farm", redis.URL(), "-farm-secret", secret, "-farm-name", name}
			if strict {
				args = append(args, "-strict")
			}
			p := serveProc(t, args)
			defer p.stop()
			type healthz struct {
				Status  string
				Reasons []string
				Farm    *struct {
					Connected        bool
					RevocationsKnown bool `json:"revocations_known"`
				}
			}
			health := func() (int, healthz, string) {
				code, body := adminDo(t, p, "GET", "/healthz", "")
				var h healthz
				if err := json.Unmarshal([]byte(body), &h); err != nil || h.Farm == nil {
					t.Fatalf("healthz without farm detail: %d %s", code, body)
				}
				return code, h, body
			}
			waitUntil(t, 10*time.Second, func() bool { _, h, _ := health(); return h.Farm.Connected }, "the node did not connect")
			code, h, body := health()
			if code != 200 || h.Status != "degraded" || h.Farm.RevocationsKnown ||
				len(h.Reasons) != 1 || h.Reasons[0] != "revocations not read yet: resuming nothing from the farm" {
				t.Errorf("healthz with the revocations unreadable: %d %s", code, body)
			}
			code, body = adminDo(t, p, "GET", "/readyz", "")
			if want := map[bool]int{false: 200, true: 503}[strict]; code != want {
				t.Errorf("readyz with the revocations unreadable: %d %s, want %d", code, body, want)
			}
			if f := getFacts(t, p.Listeners[0], clientFor("localhost", leaf)); f.TLSVersion == "" {
				t.Fatalf("no answer while the revocations are unread: %+v", f)
			}

			if err := rc.Del(t.Context(), revoked).Err(); err != nil {
				t.Fatal(err)
			}
			waitUntil(t, 10*time.Second, func() bool { _, h, _ := health(); return h.Farm.RevocationsKnown },
				"the node did not read the revocations once they were readable")
			if code, h, body := health(); code != 200 || h.Status != "ok" || len(h.Reasons) != 0 {
				t.Errorf("healthz once the revocations are read: %d %s", code, body)
			}
			if code, body := adminDo(t, p, "GET", "/readyz", ""); code != 200 {
				t.Errorf("readyz once the revocations are read: %d %s", code, body)
			}
		})
	}
}

// TestStopSignalDuringFarmWait stops a node while it waits at start for a
// farm whose store has hung (a frozen proxy to Redis): for the farm's
// ticket keys, or, in strict mode, for the transport. The stop ends the
// wait at once and the daemon exits cleanly without ever serving, saying
// that it stopped during the wait, not that the keys did not come.
func TestStopSignalDuringFarmWait(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	hung := nettest.NewProxy(t, strings.TrimSuffix(strings.TrimPrefix(url, "redis://"), "/0"))
	hung.Freeze()
	secret, cert, key, _ := farmFiles(t)
	const keysUnavailable = "farm ticket keys unavailable: serving with this node's own keys, which join the farm's set (decrypt only) when it is reachable"
	for _, tc := range []struct {
		name   string
		sig    syscall.Signal
		strict bool
		after  string // the log line after which the signal is sent
		logged string // the line that says why the daemon stopped
	}{
		{"keys/SIGTERM", syscall.SIGTERM, false, "waiting for the farm's ticket keys",
			"stop signal while waiting for the farm's ticket keys: stopping before serving"},
		{"keys/SIGINT", syscall.SIGINT, false, "waiting for the farm's ticket keys",
			"stop signal while waiting for the farm's ticket keys: stopping before serving"},
		// Strict mode waits for the transport once the keys' wait is over.
		{"strict/SIGTERM", syscall.SIGTERM, true, keysUnavailable,
			"stop signal while waiting for the farm transport: stopping before serving"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args := []string{"-cert", cert, "-key", key, "-farm", "redis://" + hung.Addr + "/0",
				"-farm-secret", secret, "-farm-name", redistest.Farm(t)}
			if tc.strict {
				args = append(args, "-strict", "-farm-connect-timeout", "30s")
			}
			var p *proc
			for attempt := 1; ; attempt++ {
				p = launch(t, args)
				wait := p.waitLog(tc.after, 15*time.Second)
				if !tc.strict && wait["up_to"] != keysWait.String() {
					t.Errorf("wait logged with up_to %v, want %v", wait["up_to"], keysWait)
				}
				p.cmd.Process.Signal(tc.sig)
				select {
				case <-p.done:
				case <-time.After(10 * time.Second):
					t.Fatalf("no exit within 10 s of %v", tc.sig)
				}
				// The keys' wait ends by itself after keysWait: if it
				// ended before the signal arrived, this process, held
				// up on a loaded machine, sent the signal too late.
				if tc.strict || attempt == 3 || !loggedBeforeStop(p, keysUnavailable) {
					break
				}
				t.Logf("attempt %d: the keys' wait ended before %v arrived (sent late): again", attempt, tc.sig)
			}
			// The keys' wait would have ended by itself after keysWait,
			// the transport's after 30 s. Timed on the daemon's clock,
			// from the signal's arrival to its last line: on a loaded
			// machine this test's own process may see a line, and so
			// send the signal, or see the exit, seconds late.
			if took := logTime(t, p.waitLog("stopped", 0)).Sub(logTime(t, p.waitLog("stop signal during the start", 0))); took > time.Second {
				t.Errorf("stopped %v after %v arrived, want within 1 s", took, tc.sig)
			}
			if code := p.cmd.ProcessState.ExitCode(); code != 0 {
				t.Errorf("exit code %d after %v during the wait, want 0", code, tc.sig)
			}
			if n := p.countLog("tlsfarm ready"); n != 0 {
				t.Errorf("ready after a stop signal during the wait")
			}
			if n := p.countLog(keysUnavailable); n != map[bool]int{false: 0, true: 1}[tc.strict] {
				t.Errorf("logged %d times %q", n, keysUnavailable)
			}
			stopping := p.waitLog(tc.logged, 0)
			if stopping["signal"] != tc.sig.String() || stopping["level"] != "INFO" {
				t.Errorf("stop logged as %v", stopping)
			}
			p.waitLog("stopped", 0)
		})
	}
}

// logTime returns the time of a JSON log line.
func logTime(t *testing.T, line map[string]any) time.Time {
	t.Helper()
	s, _ := line["time"].(string)
	at, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatalf("log line %v: time: %v", line, err)
	}
	return at
}

// loggedBeforeStop reports whether p logged msg before a stop signal
// reached it during its start, or logged msg and no stop signal reached it
// during its start.
func loggedBeforeStop(p *proc, msg string) bool {
	if p.countLog(msg) == 0 {
		return false
	}
	if p.countLog("stop signal during the start") == 0 {
		return true
	}
	return !logTime(p.t, p.waitLog(msg, 0)).After(logTime(p.t, p.waitLog("stop signal during the start", 0)))
}
