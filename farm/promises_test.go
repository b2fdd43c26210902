package farm_test

import (
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/metric"
	"github.com/tlsfarm/tlsfarm/session"
)

// The promise tests hold one promise of the cache (server name binding,
// expiry, revocation, grace cut) against a farm on a private redis-server
// (bus and store) that is killed, paused and restarted, with clients that
// take a session from one node to another: Go's, and openssl s_client
// (-sess_out on one node, -sess_in on another).

// promiseFarm starts n members on srv with the outage tests' short
// timeouts, and a heal interval short enough that a node notices a store
// restarted empty (and writes its sessions back) within a second. With
// rotate, the members share farm-wide ticket keys, so they issue fallback
// tickets while the farm is unreachable.
func promiseFarm(t *testing.T, srv *redistest.Server, n int, mode farm.Mode, rotate, openssl bool, tweakCache func(*session.Config)) ([]*farmtest.Member, *farmtest.Options, string) {
	t.Helper()
	o := &farmtest.Options{NewTransport: redisTransport(srv.URL()), Mode: mode, WriteThrough: true,
		CloseServer: openssl, TweakCache: tweakCache,
		Tweak: func(c *farm.Config) {
			c.OpTimeout = 300 * time.Millisecond
			c.BreakerCooldown = 500 * time.Millisecond
			c.HealInterval = 300 * time.Millisecond
		}}
	if rotate {
		o.Rotation = &farm.RotationConfig{Interval: time.Hour}
	}
	ms, name := farmtest.Start(t, n, o)
	if rotate {
		agreed(t, ms, 1)
	}
	return ms, o, name
}

// sniClient returns a TLS 1.3 client for the members' servers that names
// serverName and keeps its session in c.
func sniClient(serverName string, c tls.ClientSessionCache) *tls.Config {
	_, pool := tlstest.SharedCert()
	return tlstest.ClientConfig(pool, serverName, tls.VersionTLS13, c)
}

// refusedSNI returns how many resumptions m's cache refused for their
// server name.
func refusedSNI(m *farmtest.Member) uint64 {
	v, _ := metric.Value(m.Cache.Metrics(), "tlsfarm_cache_refusals_total", "reason", "server_name")
	return uint64(v)
}

// resumesAs reports whether the session in c resumes on m under
// serverName. A refusal must be the server name binding's: a session
// refused under another name must have been found and refused for it
// (else the test would prove nothing).
func resumesAs(t *testing.T, m *farmtest.Member, serverName string, c tls.ClientSessionCache, wantSNIRefusal bool) bool {
	t.Helper()
	before := refusedSNI(m)
	ok := tlstest.MustDial(t, m.Server.Addr, sniClient(serverName, c)).DidResume
	if wantSNIRefusal && !ok && refusedSNI(m) == before {
		t.Fatalf("the session presented on %s under %s was not refused for its server name: the test proves nothing", m.Name, serverName)
	}
	return ok
}

// opensslResumesAs is resumesAs with openssl s_client presenting the
// session saved in sess.
func opensslResumesAs(t *testing.T, m *farmtest.Member, serverName, sess string, wantSNIRefusal bool) bool {
	t.Helper()
	before := refusedSNI(m)
	out := tlstest.OpenSSL(t, m.Server.Addr, "-tls1_3", "-servername", serverName, "-sess_in", sess)
	ok := strings.Contains(out, "Reused, ")
	if wantSNIRefusal && !ok && refusedSNI(m) == before {
		t.Fatalf("openssl's session presented on %s under %s was not refused for its server name: the test proves nothing", m.Name, serverName)
	}
	return ok
}

// TestPromiseServerNameThroughStoreOutage: a session issued under
// a.example on n1 before Redis (bus and store) is killed, and a fallback
// ticket n1 issues under a.example while it is down, are refused under
// b.example on every node — while Redis is down, and after it returns
// empty, on n3 too, which joins then and can only load the session from
// what n1 writes back. The same sessions resume under a.example
// (controls: the refusals are the binding's). Broadcast and store-only,
// with Go's client and with openssl s_client (-sess_out on n1, -sess_in on
// the others).
func TestPromiseServerNameThroughStoreOutage(t *testing.T) {
	t.Parallel()
	for _, mode := range modes {
		for _, client := range []string{"go", "openssl"} {
			t.Run(mode.String()+"/"+client, func(t *testing.T) {
				t.Parallel()
				serverNameThroughStoreOutage(t, mode, client == "openssl")
			})
		}
	}
}

// sniSession is a client's saved session: a Go client cache or an openssl
// session file.
type sniSession struct {
	what   string
	c      *tlstest.FrozenCache
	file   string
	ticket bool // a fallback ticket: any node can open it
}

func serverNameThroughStoreOutage(t *testing.T, mode farm.Mode, openssl bool) {
	srv := redistest.Start(t)
	ms, o, name := promiseFarm(t, srv, 2, mode, true, openssl, nil)
	issue := func(what string) sniSession {
		t.Helper()
		s := sniSession{what: what}
		if openssl {
			s.file = tlstest.SessionFile(t)
			tlstest.OpenSSL(t, ms[0].Server.Addr, "-tls1_3", "-servername", "a.example", "-sess_out", s.file)
		} else {
			s.c = &tlstest.FrozenCache{}
			tlstest.MustDial(t, ms[0].Server.Addr, sniClient("a.example", s.c))
		}
		return s
	}
	// resumes presents s on m under serverName; found says whether m can
	// find it (a refusal under another name must then be the binding's).
	resumesIf := func(m *farmtest.Member, serverName string, s sniSession, found bool) bool {
		t.Helper()
		wrong := found && serverName != "a.example"
		if openssl {
			return opensslResumesAs(t, m, serverName, s.file, wrong)
		}
		return resumesAs(t, m, serverName, s.c, wrong)
	}
	resumes := func(m *farmtest.Member, serverName string, s sniSession) bool {
		t.Helper()
		return resumesIf(m, serverName, s, true)
	}
	ids := farmtest.HandshakeSessions(ms[0].Cache)
	cached := issue("cached")
	if len(ids()) != 1 {
		t.Fatalf("n1 issued %d cached sessions for one handshake", len(ids()))
	}
	id := ids()[0]
	waitStored(t, ms[0], id)
	if mode == farm.Broadcast {
		farmtest.Eventually(t, 5*time.Second, "n2 holds the session", func() bool {
			_, ok := lookup(ms[1].Cache, id)
			return ok
		})
	}

	srv.Kill()
	for _, m := range ms {
		farmtest.Eventually(t, 10*time.Second, m.Name+" issues fallback tickets", func() bool {
			on, _ := m.Node.FallbackState()
			return on
		})
	}
	fallback := issue("fallback ticket")
	fallback.ticket = true
	if len(ids()) != 1 {
		t.Fatal("n1 issued a cached session while the farm was down: the fallback ticket is not one")
	}
	down := []sniSession{cached, fallback}
	for _, m := range ms {
		for _, s := range down {
			// In store-only mode n2 cannot find the cached session
			// while the store is down.
			found := m == ms[0] || mode == farm.Broadcast || s.ticket
			if resumesIf(m, "b.example", s, found) {
				farmtest.LogStats(t, ms)
				t.Fatalf("the %s issued under a.example resumed under b.example on %s while Redis was down", s.what, m.Name)
			}
		}
	}
	// Controls: what a node holds, or any node's fallback ticket, resumes
	// under its own name.
	if !resumes(ms[1], "a.example", fallback) {
		t.Fatal("n1's fallback ticket did not resume on n2 under a.example while Redis was down")
	}
	if !resumes(ms[0], "a.example", cached) {
		t.Fatal("the cached session did not resume on n1 under a.example while Redis was down")
	}
	if mode == farm.Broadcast && !resumes(ms[1], "a.example", cached) {
		t.Fatal("n2's copy of the session did not resume under a.example while Redis was down")
	}

	srv.Restart() // empty
	for _, m := range ms {
		farmtest.Eventually(t, 10*time.Second, m.Name+" back on the farm", func() bool {
			on, _ := m.Node.FallbackState()
			return m.Node.Connected() && !on
		})
	}
	// n1 finds the store emptied and writes its sessions back.
	waitStored(t, ms[0], id)
	n3 := farmtest.Join(t, "n3", name, *o)
	farmtest.WaitConnected(t, n3)
	agreed(t, append(ms, n3), 1)
	all := append(ms, n3)
	for _, m := range all {
		for _, s := range down {
			if resumes(m, "b.example", s) {
				farmtest.LogStats(t, all)
				t.Fatalf("the %s issued under a.example resumed under b.example on %s after Redis returned", s.what, m.Name)
			}
		}
	}
	for _, s := range down {
		if !resumes(n3, "a.example", s) {
			farmtest.LogStats(t, all)
			t.Fatalf("the %s did not resume under a.example on n3, which joined after Redis returned", s.what)
		}
	}
}
