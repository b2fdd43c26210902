package natsbus_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// The promise tests run a farm on a nats-server of their own (bus and
// store: JetStream KV), each node reaching it through a proxy of its own,
// so that one node can be partitioned (Cut) or find the server hung
// (Freeze) while the others work.

// proxied is a farm's NATS transports, one proxy per member, in the order
// farmtest.Join opens them (n1 first).
type proxied struct {
	srv *natsServer
	mu  sync.Mutex
	ps  []*nettest.Proxy
}

func (p *proxied) transport(t testing.TB, farmName string) (transport.Bus, transport.Store) {
	px := nettest.NewProxy(t, p.srv.Addr())
	p.mu.Lock()
	p.ps = append(p.ps, px)
	p.mu.Unlock()
	tr := open(t, "nats://"+px.Addr, farmName)
	return tr, tr
}

// proxy returns member i's proxy (0 for n1).
func (p *proxied) proxy(i int) *nettest.Proxy {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ps[i]
}

// promiseFarm starts n members on a private server, each behind its own
// proxy, with the short timeouts of the Redis outage tests.
func promiseFarm(t *testing.T, n int, mode farm.Mode, tweakCache func(*session.Config)) ([]*farmtest.Member, *proxied, *farmtest.Options, string) {
	t.Helper()
	p := &proxied{srv: startNATS(t)}
	o := &farmtest.Options{NewTransport: p.transport, Mode: mode, WriteThrough: true, TweakCache: tweakCache,
		Tweak: func(c *farm.Config) {
			c.OpTimeout = 300 * time.Millisecond
			c.BreakerCooldown = 500 * time.Millisecond
		}}
	ms, name := farmtest.Start(t, n, o)
	return ms, p, o, name
}

// handshakeSessions records the sessions m's cache issues in handshakes.
func handshakeSessions(c *session.Cache) func() []session.ID {
	var mu sync.Mutex
	var ids []session.ID
	c.AddHook(session.EventNew, func(ev session.Event) {
		if ev.Origin != session.OriginHandshake {
			return
		}
		mu.Lock()
		ids = append(ids, ev.ID)
		mu.Unlock()
	})
	return func() []session.ID {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(ids)
	}
}

// issueOn has one new TLS 1.3 client per session handshake with m and
// returns the sessions m issued them, in order, and the clients.
func issueOn(t *testing.T, m *farmtest.Member, n int) ([]session.ID, []*tlstest.FrozenCache) {
	t.Helper()
	ids := handshakeSessions(m.Cache)
	cs := make([]*tlstest.FrozenCache, n)
	for i := range cs {
		cs[i] = &tlstest.FrozenCache{}
		tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, cs[i]))
	}
	got := ids()
	if len(got) != n {
		t.Fatalf("%s issued %d sessions for %d handshakes", m.Name, len(got), n)
	}
	return got, cs
}

// holds reports whether c holds id (without touching it).
func holds(c *session.Cache, id session.ID) bool {
	for got := range c.Expiries() {
		if got == id {
			return true
		}
	}
	return false
}

// stored reports whether the store m uses holds the record of id.
func stored(m *farmtest.Member, id session.ID) bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := m.Store.GetRecord(ctx, fmt.Sprintf("s:%x", id[:]))
	return err == nil
}

func resumes(t *testing.T, m *farmtest.Member, c *tlstest.FrozenCache) bool {
	t.Helper()
	return tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume
}

func disconnected(t *testing.T, m *farmtest.Member) time.Duration {
	t.Helper()
	start := time.Now()
	farmtest.Eventually(t, 10*time.Second, m.Name+" saw NATS go", func() bool { return !m.Node.Connected() })
	return time.Since(start)
}

// TestPromisesRetireWhilePartitioned: n2 holds three sessions n1 issued
// when its path to NATS is cut; meanwhile n1 retires one and revokes
// another, which reach the store and n1's bus but not n2. Once n2's path
// is restored, n2 checks its cache against the store (reconcile) and
// re-reads the revocations: neither session resumes on n2 (nor on n1),
// while the third, which the farm did not touch, still sits in n2's cache
// and resumes there. In broadcast mode n2 holds the bus copies; in
// store-only mode the copies it loaded from the store.
func TestPromisesRetireWhilePartitioned(t *testing.T) {
	t.Parallel()
	for _, mode := range []farm.Mode{farm.Broadcast, farm.StoreOnly} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			ms, p, _, _ := promiseFarm(t, 2, mode, nil)
			ids, cs := issueOn(t, ms[0], 3)
			names := []string{"retired", "revoked", "control"}
			for i, id := range ids {
				farmtest.Eventually(t, 5*time.Second, names[i]+" session stored", func() bool { return stored(ms[0], id) })
				if mode == farm.StoreOnly && !resumes(t, ms[1], cs[i]) {
					t.Fatalf("the %s session did not resume on n2 from the store", names[i])
				}
				farmtest.Eventually(t, 5*time.Second, "n2 holds the "+names[i]+" session", func() bool { return holds(ms[1].Cache, id) })
			}

			p.proxy(1).Cut()
			t.Logf("n2 saw the partition after %v", disconnected(t, ms[1]).Round(time.Millisecond))
			if !ms[0].Cache.Retire(ids[0], session.OriginAPI) {
				t.Fatal("n1 did not hold the session to retire")
			}
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
			st, err := ms[0].Node.RevokeSession(ctx, ids[1])
			cancel()
			if err != nil || st != farm.RevokeApplied {
				t.Fatalf("RevokeSession on n1 (connected) = %v, %v; want applied", st, err)
			}
			farmtest.Eventually(t, 5*time.Second, "the retired session left the store", func() bool { return !stored(ms[0], ids[0]) })
			time.Sleep(500 * time.Millisecond) // n2 stays cut off a while
			for i, id := range ids {
				if !holds(ms[1].Cache, id) {
					t.Fatalf("n2 dropped the %s session while partitioned: the test would not show reconcile", names[i])
				}
			}

			p.proxy(1).Restore()
			back := time.Now()
			farmtest.WaitConnected(t, ms[1])
			connected := time.Since(back)
			farmtest.Eventually(t, 10*time.Second, "n2 dropped the retired and the revoked session", func() bool {
				return !holds(ms[1].Cache, ids[0]) && !holds(ms[1].Cache, ids[1])
			})
			t.Logf("n2 reconnected %v after its path was restored, and dropped both sessions %v after", connected.Round(time.Millisecond), time.Since(back).Round(time.Millisecond))
			if !holds(ms[1].Cache, ids[2]) {
				t.Fatal("n2 dropped the control session: its cache was dropped, not reconciled")
			}
			if n := farmtest.Counter(ms[1].Node.Metrics(), "tlsfarm_farm_reconcile_total", "result", "checked"); n == 0 {
				t.Fatal("n2 checked no session against the store after the partition")
			}
			for _, m := range ms {
				for i := range 2 {
					if resumes(t, m, cs[i]) {
						farmtest.LogStats(t, ms)
						t.Fatalf("the %s session resumed on %s after the partition", names[i], m.Name)
					}
				}
			}
			if !resumes(t, ms[1], cs[2]) {
				farmtest.LogStats(t, ms)
				t.Fatal("the control session did not resume on n2 after the partition")
			}
		})
	}
}

// TestPromisesRevokeWhileHung: n1's path to NATS hangs (no byte passes,
// the connection stays open) and n1 revokes a session n2 holds. The
// revocation is pending: in force on n1, held and retried. Once the path
// thaws it reaches the store and n2, nothing is pending, and the session
// resumes on no node, including n3, which joins afterwards with an empty
// cache.
func TestPromisesRevokeWhileHung(t *testing.T) {
	t.Parallel()
	ms, p, o, name := promiseFarm(t, 2, farm.Broadcast, nil)
	ids, cs := issueOn(t, ms[0], 1)
	id, c := ids[0], cs[0]
	farmtest.Eventually(t, 5*time.Second, "the session stored", func() bool { return stored(ms[0], id) })
	farmtest.Eventually(t, 5*time.Second, "n2 holds the session", func() bool { return holds(ms[1].Cache, id) })

	p.proxy(0).Freeze()
	frozen := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	st, err := ms[0].Node.RevokeSession(ctx, id)
	cancel()
	if err != nil || st != farm.RevokePending {
		t.Fatalf("RevokeSession with n1's NATS hung = %v, %v; want pending", st, err)
	}
	t.Logf("n1 saw the hang after %v", disconnected(t, ms[0]).Round(time.Millisecond))
	if n := farmtest.Counter(ms[0].Node.Metrics(), "tlsfarm_farm_pending_revocations"); n != 1 {
		t.Fatalf("pending revocations on n1 = %d, want 1", n)
	}
	if resumes(t, ms[0], c) {
		t.Fatal("the session resumed on n1, which revoked it")
	}
	if !holds(ms[1].Cache, id) || !stored(ms[1], id) {
		t.Fatal("the revocation reached n2 or the store through a hung connection")
	}
	time.Sleep(time.Second)

	p.proxy(0).Thaw()
	t.Logf("NATS hung for n1 %v", time.Since(frozen).Round(time.Millisecond))
	back := time.Now()
	farmtest.Eventually(t, 10*time.Second, "the revocation reached the store and n2, none pending", func() bool {
		return farmtest.Counter(ms[0].Node.Metrics(), "tlsfarm_farm_pending_revocations") == 0 &&
			!holds(ms[1].Cache, id) && !stored(ms[1], id)
	})
	t.Logf("revocation applied farm-wide %v after the thaw", time.Since(back).Round(time.Millisecond))
	farmtest.WaitConnected(t, ms...)
	n3 := farmtest.Join(t, "n3", name, *o)
	farmtest.WaitConnected(t, n3)
	for _, m := range append(ms, n3) {
		if resumes(t, m, c) {
			farmtest.LogStats(t, ms)
			t.Fatalf("the revoked session resumed on %s", m.Name)
		}
	}
}

// TestPromisesSingleUseWhilePartitioned: with single-use sessions, n2's
// path to NATS is cut. A session n1 issued before (which n2 may hold a
// copy of) and one issued during the partition do not resume on n2 while
// it cannot take them from the store; n1 resumes the first once. After n2
// returns, the second resumes once (on n2), and over the whole test each
// resumes at most once in the farm.
func TestPromisesSingleUseWhilePartitioned(t *testing.T) {
	t.Parallel()
	for _, mode := range []farm.Mode{farm.Broadcast, farm.StoreOnly} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			ms, p, _, _ := promiseFarm(t, 2, mode, func(c *session.Config) { c.SingleUse = true })
			var count [2]int
			try := func(m *farmtest.Member, i int, c *tlstest.FrozenCache) bool {
				t.Helper()
				ok := resumes(t, m, c)
				if ok {
					count[i]++
				}
				if count[i] > 1 {
					farmtest.LogStats(t, ms)
					t.Fatalf("single-use session %d resumed %d times (the last on %s)", i, count[i], m.Name)
				}
				return ok
			}
			ids, before := issueOn(t, ms[0], 1)
			farmtest.Eventually(t, 5*time.Second, "the first session stored", func() bool { return stored(ms[0], ids[0]) })
			time.Sleep(200 * time.Millisecond) // let broadcast land
			copied := holds(ms[1].Cache, ids[0])

			p.proxy(1).Cut()
			disconnected(t, ms[1])
			ids2, during := issueOn(t, ms[0], 1)
			farmtest.Eventually(t, 5*time.Second, "the second session stored", func() bool { return stored(ms[0], ids2[0]) })
			for range 3 {
				if try(ms[1], 0, before[0]) || try(ms[1], 1, during[0]) {
					farmtest.LogStats(t, ms)
					t.Fatalf("a single-use session resumed on n2 while n2 could not reach the store (n2 held a copy of the first: %t)", copied)
				}
			}
			if !try(ms[0], 0, before[0]) {
				t.Fatal("the first session did not resume on n1, which reaches the store")
			}

			p.proxy(1).Restore()
			farmtest.WaitConnected(t, ms[1])
			for _, m := range ms {
				try(m, 0, before[0])
			}
			resumedOnN2 := false
			farmtest.Eventually(t, 5*time.Second, "the second session resumed on n2 once it reached the store", func() bool {
				resumedOnN2 = resumedOnN2 || try(ms[1], 1, during[0])
				return resumedOnN2
			})
			for _, m := range ms {
				try(m, 0, before[0])
				try(m, 1, during[0])
			}
			t.Logf("n2 held a copy of the first session before the partition: %t; resumes: %v", copied, count)
		})
	}
}
