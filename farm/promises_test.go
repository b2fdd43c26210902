package farm_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
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

// promiseOpTimeout is the promise farms' OpTimeout: how long a node gives
// each store write.
const promiseOpTimeout = 300 * time.Millisecond

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
			c.OpTimeout = promiseOpTimeout
			c.BreakerCooldown = 500 * time.Millisecond
			c.HealInterval = 300 * time.Millisecond
			// The promises are about what resumes, not how fast the
			// store answers: a control's lookup answered (a hit) after
			// the default 250ms on a loaded machine under -race
			// (lookups_abandoned_total{cause="deadline"}), and the
			// control did not resume. A longer deadline only gives a
			// session that must not resume more chance to.
			c.LookupTimeout = 2 * time.Second
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
	waitShared(t, ms, mode, id)

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

// waitShared waits until n1 (ms[0]) has written its session id to the
// store and, in broadcast mode, until n2 (ms[1]) holds it too.
func waitShared(t *testing.T, ms []*farmtest.Member, mode farm.Mode, id session.ID) {
	t.Helper()
	waitStored(t, ms[0], id)
	if mode == farm.Broadcast {
		waitHeld(t, ms[1], id)
	}
}

// stored reports whether the store m uses holds the record of id.
func stored(m *farmtest.Member, id session.ID) bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := m.Store.GetRecord(ctx, "s:"+hex.EncodeToString(id[:]))
	return err == nil
}

// storeTTL returns how long srv keeps the record of id (0: no record).
func storeTTL(t *testing.T, srv *redistest.Server, id session.ID) time.Duration {
	t.Helper()
	opt, err := redis.ParseURL(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	raw := redis.NewClient(opt)
	defer raw.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	// The record's key ends with its hash tag; its marks' keys (a cut's
	// lapsed-cut mark, say) add a suffix.
	keys, _ := raw.Keys(ctx, "*{s:"+hex.EncodeToString(id[:])+"}").Result()
	if len(keys) != 1 {
		return 0
	}
	ttl, _ := raw.PTTL(ctx, keys[0]).Result()
	return max(ttl, 0)
}

// passOn is a client that presents from's session and keeps the one the
// server then issues in to.
type passOn struct{ from, to *tlstest.FrozenCache }

func (p passOn) Get(k string) (*tls.ClientSessionState, bool) { return p.from.Get(k) }
func (p passOn) Put(k string, cs *tls.ClientSessionState)     { p.to.Put(k, cs) }

// cachedHandshake runs dial, a handshake with m that is to issue a cached
// session (ids records m's), and returns that session. A handshake may get
// a fallback ticket instead, by design, while m takes the farm for
// unreachable: on a loaded machine one probe answered late, or one store
// write that outlasted OpTimeout, turns fallback tickets on for a moment.
// Such a handshake is run again (with a fresh client: dial makes one) once
// m issues cached sessions again; one that issued neither a session nor a
// fallback ticket fails the test.
func cachedHandshake(t *testing.T, m *farmtest.Member, ids func() []session.ID, what string, dial func()) session.ID {
	t.Helper()
	for attempt := 1; ; attempt++ {
		before, fb := len(ids()), fallbackIssued(m)
		dial()
		got, fell := ids(), fallbackIssued(m)-fb
		switch {
		case len(got) == before+1 && fell == 0:
			return got[before]
		case len(got) == before && fell == 1 && attempt < 5:
			t.Logf("%s gave the %s handshake a fallback ticket (it took the farm for unreachable); again", m.Name, what)
			farmtest.Eventually(t, 10*time.Second, m.Name+" issues cached sessions again", func() bool {
				on, _ := m.Node.FallbackState()
				return !on
			})
		default:
			farmtest.LogStats(t, []*farmtest.Member{m})
			t.Fatalf("%s issued %d cached sessions and %v fallback tickets for the %s handshake (attempt %d)", m.Name, len(got)-before, fell, what, attempt)
		}
	}
}

// waitServing waits until every member's node is subscribed to its bus and
// has read the farm's revocations: until then a node (one that just
// joined) resumes no session from the farm, by design (see farm.Join).
func waitServing(t *testing.T, ms ...*farmtest.Member) {
	t.Helper()
	farmtest.WaitConnected(t, ms...)
	farmtest.Eventually(t, 10*time.Second, "all nodes know the farm's revocations", func() bool {
		for _, m := range ms {
			if !m.Node.RevocationsKnown() {
				return false
			}
		}
		return true
	})
}

// TestPromiseRevocationWhileStorePaused: Redis (bus and store) is paused
// (SIGSTOP) and n1 revokes two sessions it issued: one a Go client holds,
// with a child n2 issued resuming it before the pause and a fallback
// ticket n1 issued resuming it during the pause (all one chain), and one
// openssl saved (-sess_out). The revocations are pending; on n1 nothing of
// either chain resumes. Then Redis returns: resumed as it was, or killed
// and restarted empty. Once nothing is pending, nothing of either chain
// resumes on any node — n1, n2, and n3, which joins afterwards with an
// empty cache — with Go's client or openssl (-sess_in), while an untouched
// session resumes on n3 (the refusals are the revocations'). Broadcast and
// store-only.
func TestPromiseRevocationWhileStorePaused(t *testing.T) {
	t.Parallel()
	for _, back := range []string{"resumed", "restarted-empty", "resumed-then-lost"} {
		for _, mode := range modes {
			t.Run(back+"/"+mode.String(), func(t *testing.T) {
				t.Parallel()
				revocationWhileStorePaused(t, mode, back)
			})
		}
	}
}

func revocationWhileStorePaused(t *testing.T, mode farm.Mode, back string) {
	srv := redistest.Start(t)
	ms, o, name := promiseFarm(t, srv, 2, mode, true, true, nil)
	n1ids, n2ids := farmtest.HandshakeSessions(ms[0].Cache), farmtest.HandshakeSessions(ms[1].Cache)
	var revoked, control, child *tlstest.FrozenCache
	dialNew := func(m *farmtest.Member, c **tlstest.FrozenCache) func() {
		return func() {
			*c = &tlstest.FrozenCache{}
			tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, *c))
		}
	}
	id := cachedHandshake(t, ms[0], n1ids, "first Go client's", dialNew(ms[0], &revoked))
	controlID := cachedHandshake(t, ms[0], n1ids, "second Go client's", dialNew(ms[0], &control))
	sess := tlstest.SessionFile(t)
	opensslID := cachedHandshake(t, ms[0], n1ids, "openssl's", func() {
		tlstest.OpenSSL(t, ms[0].Server.Addr, "-tls1_3", "-servername", "localhost", "-sess_out", sess)
	})
	for _, x := range []session.ID{id, controlID, opensslID} {
		waitStored(t, ms[0], x)
	}
	childID := cachedHandshake(t, ms[1], n2ids, "resumption's", func() {
		child = &tlstest.FrozenCache{}
		if !tlstest.MustDial(t, ms[1].Server.Addr, farmtest.Client(tls.VersionTLS13, passOn{revoked, child})).DidResume {
			t.Fatal("the session to revoke did not resume on n2")
		}
	})
	waitStored(t, ms[1], childID)
	if mode == farm.Broadcast {
		farmtest.Eventually(t, 5*time.Second, "the peers hold each other's sessions", func() bool {
			_, ok1 := lookup(ms[1].Cache, id)
			_, ok2 := lookup(ms[0].Cache, childID)
			return ok1 && ok2
		})
	}

	srv.Pause()
	// A hung Redis turns fallback tickets on once the probe finds it hung.
	farmtest.Eventually(t, 10*time.Second, "n1 finds Redis hung", func() bool { return !ms[0].Node.Connected() })
	farmtest.Eventually(t, 10*time.Second, "n1 issues fallback tickets", func() bool {
		on, _ := ms[0].Node.FallbackState()
		return on
	})
	issued := len(n1ids())
	ticket := &tlstest.FrozenCache{}
	if !tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tls.VersionTLS13, passOn{revoked, ticket})).DidResume {
		t.Fatal("the session to revoke did not resume on n1 while Redis was paused")
	}
	if len(n1ids()) != issued {
		t.Fatal("n1 issued a cached session while Redis was paused: the successor is not a fallback ticket")
	}
	for _, x := range []session.ID{id, opensslID} {
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		st, err := ms[0].Node.RevokeSession(ctx, x)
		cancel()
		if err != nil || st != farm.RevokePending {
			t.Fatalf("RevokeSession with Redis paused = %v, %v; want pending", st, err)
		}
	}
	goClients := map[string]*tlstest.FrozenCache{"revoked session": revoked, "child": child, "fallback ticket": ticket}
	for what, c := range goClients {
		if tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
			t.Fatalf("the %s resumed on n1, which revoked it, while Redis was paused", what)
		}
	}
	opensslResumes := func(m *farmtest.Member) bool {
		out := tlstest.OpenSSL(t, m.Server.Addr, "-tls1_3", "-servername", "localhost", "-sess_in", sess)
		return strings.Contains(out, "Reused, ")
	}
	if opensslResumes(ms[0]) {
		t.Fatal("openssl's revoked session resumed on n1 while Redis was paused")
	}

	if back == "restarted-empty" {
		srv.Kill()
		srv.Restart()
	} else {
		srv.Resume()
	}
	returned := time.Now()
	farmtest.Eventually(t, 10*time.Second, "the revocations applied farm-wide", func() bool {
		return ms[0].Node.PendingRevocations() == 0
	})
	t.Logf("revocations applied farm-wide %v after Redis returned", time.Since(returned).Round(time.Millisecond))
	if back == "resumed-then-lost" {
		// The store loses the tombstones with the rest of its data.
		srv.Kill()
		srv.Restart()
	}
	empty := back != "resumed"
	farmtest.Eventually(t, 10*time.Second, "n2 dropped the revoked sessions", func() bool {
		_, ok1 := lookup(ms[1].Cache, id)
		_, ok2 := lookup(ms[1].Cache, childID)
		_, ok3 := lookup(ms[1].Cache, opensslID)
		return !ok1 && !ok2 && !ok3
	})
	if empty {
		// The control comes back through the write-back.
		farmtest.Eventually(t, 10*time.Second, "the control written back", func() bool { return stored(ms[0], controlID) })
	}
	n3 := farmtest.Join(t, "n3", name, *o)
	waitServing(t, ms[0], ms[1], n3)
	all := append(ms, n3)
	agreed(t, all, 1)
	for _, m := range all {
		for what, c := range goClients {
			if tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
				farmtest.LogStats(t, all)
				t.Fatalf("the %s resumed on %s after Redis returned", what, m.Name)
			}
		}
		if opensslResumes(m) {
			farmtest.LogStats(t, all)
			t.Fatalf("openssl's revoked session resumed on %s after Redis returned", m.Name)
		}
	}
	if !tlstest.MustDial(t, n3.Server.Addr, farmtest.Client(tls.VersionTLS13, control)).DidResume {
		farmtest.LogStats(t, all)
		t.Fatal("the untouched session did not resume on n3")
	}
}

// TestPromiseExpiryAfterStoreRestartedEmpty: Redis (bus and store) is
// killed and restarted empty; the nodes write their sessions back. A
// session's written-back record lives no longer than the session (the
// store's TTL is at most what is left of it), and once it expires it
// resumes on no node: n1, n2, and n3, which joins after the restart and
// resumed it from the store just before. Two bounds: the session's
// Lifetime (a session n1 issued), and MaxChainLifetime (a child n2 issued
// resuming it, and a grandchild n3 issued resuming that, which end with
// the chain). Broadcast and store-only.
func TestPromiseExpiryAfterStoreRestartedEmpty(t *testing.T) {
	t.Parallel()
	// Long enough for the write-back and n3's resumption to come before
	// the end on a loaded machine: with 6 s, n3 resumed after it (up to
	// 250 ms) under -race with -test.cpu 1 and a CPU hog.
	const bound = 10 * time.Second
	for _, chain := range []bool{false, true} {
		for _, mode := range modes {
			name := "lifetime/"
			if chain {
				name = "chain/"
			}
			t.Run(name+mode.String(), func(t *testing.T) {
				t.Parallel()
				expiryAfterStoreRestartedEmpty(t, mode, chain, bound)
			})
		}
	}
}

func expiryAfterStoreRestartedEmpty(t *testing.T, mode farm.Mode, chain bool, bound time.Duration) {
	srv := redistest.Start(t)
	ms, o, name := promiseFarm(t, srv, 2, mode, false, false, func(c *session.Config) {
		if chain {
			c.MaxChainLifetime = bound
		} else {
			c.Lifetime = bound
		}
	})
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rc.Close()
	ids, cs := farmtest.Issue(t, ms[0], 1)
	id, c, holder := ids[0], cs[0], ms[0]
	waitStored(t, ms[0], id)
	if chain {
		// The session that expires is the child n2 issues: its own
		// Lifetime is an hour, its chain's end a few seconds away.
		n2ids := farmtest.HandshakeSessions(ms[1].Cache)
		child := &tlstest.FrozenCache{}
		if !tlstest.MustDial(t, ms[1].Server.Addr, farmtest.Client(tls.VersionTLS13, passOn{c, child})).DidResume {
			t.Fatal("the session did not resume on n2")
		}
		id, c, holder = n2ids()[0], child, ms[1]
		waitStored(t, ms[1], id)
	}
	rec, ok := lookup(holder.Cache, id)
	if !ok {
		t.Fatalf("%s does not hold the session it issued", holder.Name)
	}
	expires := rec.Expires

	srv.Kill()
	srv.Restart()
	farmtest.Eventually(t, 10*time.Second, "the session written back", func() bool { return stored(holder, id) })
	// What is left of the session when the TTL is asked for, not once
	// the answer is in: the other way counted storedTTL's own two round
	// trips, and the wait for the CPU after them, against the record
	// (it failed once under load, 136ms over the 100ms then allowed).
	// The store counts a TTL from when the write reaches it, the node
	// from when it reads its clock for the write: the record may outlive
	// the session by that write's way to the store, which the node bounds
	// by OpTimeout (a write that takes longer fails).
	asked := time.Now()
	ttl, ok := storedTTL(t, rc, holder, id)
	if left := expires.Sub(asked); ok && ttl > left+promiseOpTimeout {
		t.Fatalf("the written-back record lives %v, the session %v", ttl, left)
	}
	// A node that has yet to read the farm's revocations resumes nothing
	// from the farm (see farm.Join): under load n3 read them only after
	// its first handshake.
	n3 := farmtest.Join(t, "n3", name, *o)
	waitServing(t, n3)
	n3ids := farmtest.HandshakeSessions(n3.Cache)
	grandchild := &tlstest.FrozenCache{}
	if !tlstest.MustDial(t, n3.Server.Addr, farmtest.Client(tls.VersionTLS13, passOn{c, grandchild})).DidResume {
		if time.Now().After(expires) {
			t.Fatalf("n3 resumed %v after the session expired: too slow to prove anything", time.Since(expires))
		}
		farmtest.LogStats(t, append(ms, n3))
		t.Fatal("the written-back session did not resume on n3 before it expired")
	}
	clients := map[string]*tlstest.FrozenCache{"session": c}
	if chain {
		if len(n3ids()) != 1 {
			t.Fatalf("n3 issued %d sessions resuming one", len(n3ids()))
		}
		clients["grandchild"] = grandchild
		waitStored(t, n3, n3ids()[0])
	}

	time.Sleep(time.Until(expires.Add(200 * time.Millisecond))) // the promise is about time
	all := append(ms, n3)
	for _, m := range all {
		for what, c := range clients {
			if tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
				farmtest.LogStats(t, all)
				t.Fatalf("the %s resumed on %s after it expired", what, m.Name)
			}
		}
	}
	farmtest.Eventually(t, 2*time.Second, "the store dropped the expired session", func() bool { return !stored(holder, id) })
	if chain {
		farmtest.Eventually(t, 2*time.Second, "the store dropped the grandchild", func() bool { return !stored(n3, n3ids()[0]) })
	}
}

// TestPromiseGraceCutWhileStorePaused: openssl saves two sessions on n1
// (-sess_out), which reach the store (and n2, in broadcast mode); Redis
// (bus and store) is paused (SIGSTOP) and openssl resumes the first on n1
// (-sess_in), which cuts it to its grace. Past the grace, with Redis still
// paused, it no longer resumes on n1. Then Redis resumes: the cut reaches
// the store (the record goes: its grace is over) and n2, and neither n1,
// n2, nor n3, which joins afterwards, resumes it, while the untouched
// session resumes on n2 and n3. Broadcast and store-only.
func TestPromiseGraceCutWhileStorePaused(t *testing.T) {
	t.Parallel()
	const grace = 2 * time.Second
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			srv := redistest.Start(t)
			ms, o, name := promiseFarm(t, srv, 2, mode, false, true, func(c *session.Config) { c.ResumeGrace = grace })
			ids := farmtest.HandshakeSessions(ms[0].Cache)
			save := func() (string, session.ID) {
				t.Helper()
				sess := tlstest.SessionFile(t)
				before := len(ids())
				tlstest.OpenSSL(t, ms[0].Server.Addr, "-tls1_3", "-servername", "localhost", "-sess_out", sess)
				if len(ids()) != before+1 {
					t.Fatalf("openssl's handshake issued %d sessions, want 1", len(ids())-before)
				}
				id := ids()[before]
				waitStored(t, ms[0], id)
				return sess, id
			}
			resumes := func(m *farmtest.Member, sess string) bool {
				t.Helper()
				out := tlstest.OpenSSL(t, m.Server.Addr, "-tls1_3", "-servername", "localhost", "-sess_in", sess)
				return strings.Contains(out, "Reused, ")
			}
			parentS, parent := save()
			controlS, control := save()
			if mode == farm.Broadcast {
				farmtest.Eventually(t, 5*time.Second, "n2 holds the sessions", func() bool {
					_, ok1 := lookup(ms[1].Cache, parent)
					_, ok2 := lookup(ms[1].Cache, control)
					return ok1 && ok2
				})
			}

			srv.Pause()
			farmtest.Eventually(t, 10*time.Second, "n1 finds Redis hung", func() bool { return !ms[0].Node.Connected() })
			n := len(ids())
			if !resumes(ms[0], parentS) {
				t.Fatal("openssl's session did not resume on n1 from its own cache while Redis was paused")
			}
			if len(ids()) != n+1 {
				t.Fatal("the resumption got no successor: the parent is not cut and the test proves nothing")
			}
			cutBy := time.Now().Add(grace)
			time.Sleep(time.Until(cutBy.Add(300 * time.Millisecond))) // the promise is about time
			if resumes(ms[0], parentS) {
				t.Fatal("the session resumed on n1 past its grace while Redis was paused")
			}

			srv.Resume()
			farmtest.Eventually(t, 10*time.Second, "the cut written and published", func() bool {
				return farmtest.Counter(ms[0].Node.Metrics(), "tlsfarm_farm_lifecycle_backlog_length") == 0 &&
					farmtest.Counter(ms[0].Node.Metrics(), "tlsfarm_farm_pending_revocations") == 0
			})
			farmtest.Eventually(t, 10*time.Second, "the store dropped the cut session", func() bool { return !stored(ms[0], parent) })
			dl := time.Now().Add(10 * time.Second)
			for {
				if _, ok := lookup(ms[1].Cache, parent); !ok {
					break
				}
				if time.Now().After(dl) {
					farmtest.LogStats(t, ms)
					t.Fatal("timed out waiting for: n2 dropped its copy")
				}
				time.Sleep(5 * time.Millisecond)
			}
			n3 := farmtest.Join(t, "n3", name, *o)
			farmtest.WaitConnected(t, ms[0], ms[1], n3)
			all := append(ms, n3)
			for _, m := range all {
				if resumes(m, parentS) {
					farmtest.LogStats(t, all)
					t.Fatalf("the session resumed on %s past its grace, after Redis resumed", m.Name)
				}
			}
			for _, m := range all[1:] {
				if !resumes(m, controlS) {
					farmtest.LogStats(t, all)
					t.Fatalf("the untouched session did not resume on %s", m.Name)
				}
			}
		})
	}
}

// TestPromiseGraceCutWhileCutOff: n1 reaches Redis (bus and store)
// through a proxy, n2 directly. n1 issues a session, which reaches the
// store (and n2, in broadcast mode); then n1's path is cut (its
// connections closed, new ones refused) and a client resumes the session
// on n1, which cuts it to its grace. n1 keeps the child and the cut for
// later. Once its path is restored and the grace is over, the session
// resumes on no node — n1, n2 (which never lost Redis: only the replayed
// messages can tell it), and n3, which joins afterwards — and the store
// no longer holds it. Broadcast and store-only.
func TestPromiseGraceCutWhileCutOff(t *testing.T) {
	t.Parallel()
	const grace = 2 * time.Second
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			srv := redistest.Start(t)
			px := nettest.NewProxy(t, srv.Addr())
			newTransport := redisTransportVia(srv.URL(), 1, px.Addr) // n1 behind px
			o := &farmtest.Options{NewTransport: newTransport, Mode: mode, WriteThrough: true,
				TweakCache: func(c *session.Config) { c.ResumeGrace = grace },
				Tweak: func(c *farm.Config) {
					c.OpTimeout = 300 * time.Millisecond
					c.BreakerCooldown = 500 * time.Millisecond
				}}
			ms, name := farmtest.Start(t, 2, o)
			o.NewTransport = redisTransport(srv.URL())
			ids, cs := farmtest.Issue(t, ms[0], 1)
			id, c := ids[0], cs[0]
			waitShared(t, ms, mode, id)

			px.Cut()
			farmtest.Eventually(t, 10*time.Second, "n1 cut off", func() bool { return !ms[0].Node.Connected() })
			newOnN1 := farmtest.HandshakeSessions(ms[0].Cache)
			if !tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
				t.Fatal("the session did not resume on n1 from its own cache while cut off")
			}
			if len(newOnN1()) != 1 {
				t.Fatal("the resumption got no successor: the session is not cut and the test proves nothing")
			}
			cutBy := time.Now().Add(grace)
			farmtest.Eventually(t, 5*time.Second, "n1 kept the child for later", func() bool {
				return farmtest.Counter(ms[0].Node.Metrics(), "tlsfarm_farm_backlog_length") == 1
			})

			px.Restore()
			farmtest.WaitConnected(t, ms[0])
			farmtest.Eventually(t, 10*time.Second, "n1 wrote and published what it kept", func() bool {
				return farmtest.Counter(ms[0].Node.Metrics(), "tlsfarm_farm_backlog_length") == 0 &&
					farmtest.Counter(ms[0].Node.Metrics(), "tlsfarm_farm_lifecycle_backlog_length") == 0
			})
			time.Sleep(time.Until(cutBy.Add(300 * time.Millisecond))) // the promise is about time
			farmtest.Eventually(t, 5*time.Second, "the store dropped the cut session", func() bool { return !stored(ms[1], id) })
			n3 := farmtest.Join(t, "n3", name, *o)
			farmtest.WaitConnected(t, n3)
			all := append(ms, n3)
			for _, m := range all {
				if tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
					farmtest.LogStats(t, all)
					t.Fatalf("the session resumed on %s past its grace, after n1's path was restored", m.Name)
				}
			}
		})
	}
}

// TestPromiseSingleUseThroughStoreLoss: broadcast. n2 reaches Redis
// through a proxy, n1 directly. n2 holds a copy of a session n1 issued (S,
// Go's, and openssl's) when its path is cut; meanwhile n1 ends or shortens
// them, and Redis restarts empty, losing what said so. When n2's path is
// restored it finds the store emptied and writes its sessions back: not
// these whole. Afterwards they resume on no node — n1, n2, nor n3, which
// joins after:
//
//   - consume: single use; a client resumes each on n1, which consumes it
//     (store record deleted, retirement published);
//   - retire: n1 retires each (Cache.Retire);
//   - cut: a client resumes each on n1, which cuts it to its grace
//     (ResumeGrace); the checks run after the grace.
//
// n1 keeps the retirements and cuts it published for a re-send
// (Node.sent), so n2's write-back, which asks its peers to re-send first,
// learns of them and leaves the sessions out (or cut). It failed before
// that (the promises branch's defect 4): n1 held only what had not reached
// the farm, and n2 wrote the sessions back whole.
func TestPromiseSingleUseThroughStoreLoss(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"consume", "retire", "cut"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			testPromiseEndThroughStoreLoss(t, kind, false)
		})
	}
}

// TestPromiseEndThroughRestartAndStoreLoss is
// TestPromiseSingleUseThroughStoreLoss with n1 restarted (Close, then n1b
// joins with n1's Config.RevocationFile) once its retirements and cuts
// have reached the store and before Redis restarts empty: n1b, which made
// none of them, re-sends them when n2 asks, having read them back from
// the sent file beside the revocation file. Before that file, n1b's ring
// was empty and n2 wrote the sessions back whole.
func TestPromiseEndThroughRestartAndStoreLoss(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"consume", "retire", "cut"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			testPromiseEndThroughStoreLoss(t, kind, true)
		})
	}
}

// testPromiseEndThroughStoreLoss runs a case of
// TestPromiseSingleUseThroughStoreLoss, with n1 restarted after it ended
// the sessions if restart.
func testPromiseEndThroughStoreLoss(t *testing.T, kind string, restart bool) {
	const grace = time.Second
	file := filepath.Join(t.TempDir(), "revocations")
	srv := redistest.Start(t)
	px := nettest.NewProxy(t, srv.Addr())
	newTransport := redisTransportVia(srv.URL(), 2, px.Addr) // n2 behind px
	o := &farmtest.Options{NewTransport: newTransport, Mode: farm.Broadcast, WriteThrough: true, CloseServer: true,
		TweakCache: func(c *session.Config) {
			switch kind {
			case "consume":
				c.SingleUse = true
			case "cut":
				c.ResumeGrace = grace
			}
		},
		Tweak: func(c *farm.Config) {
			c.OpTimeout = 300 * time.Millisecond
			c.BreakerCooldown = 500 * time.Millisecond
			c.HealInterval = 300 * time.Millisecond
			if restart && (c.NodeName == "n1" || c.NodeName == "n1b") {
				c.RevocationFile = file
			}
		}}
	ms, name := farmtest.Start(t, 2, o)
	farmtest.WaitRevocationsKnown(t, ms...) // with OpTimeout 300ms, a loaded machine left it to the heal
	// Each node must know the store's generation before n2 is cut off: a
	// node that first reads it after the restart has no earlier one to
	// tell the loss by (a CI run at load 11, whose first reads timed out
	// at 300ms, waited 10 s for "n2 found the store emptied").
	farmtest.Eventually(t, 10*time.Second, "both nodes read the store's generation", func() bool {
		return ms[0].Node.StoreGeneration() != nil && ms[1].Node.StoreGeneration() != nil
	})
	o.NewTransport = redisTransport(srv.URL())
	ids, cs := farmtest.Issue(t, ms[0], 1)
	id, c := ids[0], cs[0]
	sess := tlstest.SessionFile(t)
	before := farmtest.HandshakeSessions(ms[0].Cache)
	tlstest.OpenSSL(t, ms[0].Server.Addr, "-tls1_3", "-servername", "localhost", "-sess_out", sess)
	if len(before()) != 1 {
		t.Fatal("openssl's handshake issued no session")
	}
	osslID := before()[0]
	for _, x := range []session.ID{id, osslID} {
		waitShared(t, ms, farm.Broadcast, x)
	}
	osslResumes := func(m *farmtest.Member) bool {
		out := tlstest.OpenSSL(t, m.Server.Addr, "-tls1_3", "-servername", "localhost", "-sess_in", sess)
		return strings.Contains(out, "Reused, ")
	}

	px.Cut()
	farmtest.Eventually(t, 10*time.Second, "n2 cut off", func() bool { return !ms[1].Node.Connected() })
	cutBy := time.Now().Add(grace)
	switch kind {
	case "retire":
		for _, x := range []session.ID{id, osslID} {
			if !ms[0].Cache.Retire(x, session.OriginAPI) {
				t.Fatal("n1 did not hold the session to retire")
			}
		}
	default:
		if !tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
			t.Fatalf("the session did not resume on n1 (%s)", kind)
		}
		if !osslResumes(ms[0]) {
			t.Fatalf("openssl's session did not resume on n1 (%s)", kind)
		}
	}
	if restart {
		for _, x := range []session.ID{id, osslID} {
			farmtest.Eventually(t, 5*time.Second, "n1's "+kind+" reached the store", func() bool {
				if kind != "cut" {
					return !stored(ms[0], x)
				}
				ttl := storeTTL(t, srv, x) // a cut leaves the record, shorter
				return ttl > 0 && ttl <= grace
			})
		}
		if kind != "cut" {
			// A consumption took the record from the store before
			// its retirement was published: the store says nothing of
			// the bus. Close lets a publish in flight finish within
			// OpTimeout only, and keeps in the lifecycle file what did
			// not.
			farmtest.Eventually(t, 5*time.Second, "n1's retirements were published", func() bool {
				return farmtest.Counter(ms[0].Node.Metrics(), "tlsfarm_farm_lifecycle_total", "event", "retire_sent") >= 2
			})
		}
		ms[0].Node.Close()
		if _, err := os.Stat(file + ".lifecycle"); !os.IsNotExist(err) {
			t.Fatalf("n1 closed keeping retirements or cuts that did not reach the farm: %v", err)
		}
		ms[0] = farmtest.Join(t, "n1b", name, *o)
		farmtest.WaitConnected(t, ms[0])
	}
	gen2 := ms[1].Node.StoreGeneration()
	srv.Kill()
	srv.Restart()
	farmtest.WaitConnected(t, ms[0])
	px.Restore()
	farmtest.WaitConnected(t, ms[1])
	// n2 has read the new generation and written back what it holds:
	// not told by its reconcile (store_lost), which may come after the
	// heal found the loss, nor by the sessions written back, none if the
	// peers' re-sends ended them all first (a 2 s delay planted before
	// each reconcile pass).
	farmtest.Eventually(t, 10*time.Second, "n2 found the store emptied and wrote back", func() bool {
		return !bytes.Equal(ms[1].Node.StoreGeneration(), gen2) && !ms[1].Node.Refilling()
	})
	time.Sleep(3 * time.Second) // past the write-back's wait: what n2 writes back is in the store by then
	if wait := time.Until(cutBy); wait > 0 {
		time.Sleep(wait + 100*time.Millisecond) // past the grace (cut)
	}
	for _, x := range []session.ID{id, osslID} {
		if stored(ms[0], x) {
			farmtest.LogStats(t, ms)
			t.Errorf("the store holds a session n1 ended (%s) again (%d written back by n2)", kind,
				farmtest.Counter(ms[1].Node.Metrics(), "tlsfarm_farm_written_back_total"))
		}
	}
	n3 := farmtest.Join(t, "n3", name, *o)
	farmtest.WaitConnected(t, n3)
	all := []*farmtest.Member{n3, ms[0], ms[1]}
	for _, m := range all {
		if tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
			farmtest.LogStats(t, all)
			t.Fatalf("the session n1 ended (%s) resumed again on %s", kind, m.Name)
		}
		if osslResumes(m) {
			farmtest.LogStats(t, all)
			t.Fatalf("openssl's session n1 ended (%s) resumed again on %s", kind, m.Name)
		}
	}
}
