package natsbus_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
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
// farmtest.Join opens them (n1 first), each with the extra client options
// opts.
type proxied struct {
	srv  *natsServer
	opts []nats.Option
	mu   sync.Mutex
	ps   []*nettest.Proxy
}

func (p *proxied) transport(t testing.TB, farmName string) (transport.Bus, transport.Store) {
	px := nettest.NewProxy(t, p.srv.Addr())
	p.mu.Lock()
	p.ps = append(p.ps, px)
	p.mu.Unlock()
	tr, err := natsbus.Open("nats://"+px.Addr, farmName, &natsbus.Options{NATS: p.opts})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr, tr
}

// proxy returns member i's proxy (0 for n1).
// cutAtEnd cuts every member's proxy when the test ends; called after
// farmtest.Start, it runs before the nodes close (cleanups run last
// registered first).
func (p *proxied) cutAtEnd(t testing.TB) {
	t.Cleanup(func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, px := range p.ps {
			px.Cut()
		}
	})
}

func (p *proxied) proxy(i int) *nettest.Proxy {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ps[i]
}

// A fault breaks one node's path to NATS (down) and mends it (up).
type fault struct {
	name     string
	down, up func(*nettest.Proxy)
	opts     []nats.Option // proxied.opts
	gap      bool          // the node's connection drops: it may have lost messages
}

var (
	// cut is a partition: the connection closes, and new ones fail.
	cut = fault{"cut", (*nettest.Proxy).Cut, (*nettest.Proxy).Restore, nil, true}
	// frozen is a hung server, for less than natsbus's ping timeout: the
	// connection survives and what was held arrives once it thaws.
	frozen = fault{"frozen", (*nettest.Proxy).Freeze, (*nettest.Proxy).Thaw, nil, false}
	// frozenDropped is a hung server for longer than the client's ping
	// timeout (short here: two pings 200ms apart unanswered; natsbus's is
	// two 5s apart): it drops the connection, and cannot make another
	// until the thaw. nats.go keeps what is published meanwhile and sends
	// it once connected again.
	frozenDropped = fault{"frozen-dropped", (*nettest.Proxy).Freeze, (*nettest.Proxy).Thaw, shortPing, true}
	// frozenUnbuffered is frozenDropped with a client that keeps nothing
	// published while it reconnects (it fails at once): what the farm
	// publishes then reaches the farm only if the farm tries again.
	frozenUnbuffered = fault{"frozen-unbuffered", (*nettest.Proxy).Freeze, (*nettest.Proxy).Thaw,
		append(shortPing[:len(shortPing):len(shortPing)], nats.ReconnectBufSize(-1)), true}

	shortPing = []nats.Option{nats.PingInterval(200 * time.Millisecond), nats.MaxPingsOutstanding(2)}
)

// promiseFarm starts n members on a private server, each behind its own
// proxy, with the short timeouts of the Redis outage tests. When the test
// ends, it cuts the proxies before the nodes close.
func promiseFarm(t *testing.T, n int, mode farm.Mode, f fault, tweakCache func(*session.Config)) ([]*farmtest.Member, *proxied, *farmtest.Options, string) {
	t.Helper()
	p := &proxied{srv: startNATS(t), opts: f.opts}
	o := &farmtest.Options{NewTransport: p.transport, Mode: mode, WriteThrough: true, TweakCache: tweakCache,
		Tweak: func(c *farm.Config) {
			c.OpTimeout = 300 * time.Millisecond
			c.BreakerCooldown = 500 * time.Millisecond
		}}
	ms, name := farmtest.Start(t, n, o)
	p.cutAtEnd(t)
	return ms, p, o, name
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

// handoff is a client that presents from's session and keeps the one the
// server then issues in to.
type handoff struct{ from, to *tlstest.FrozenCache }

func (h handoff) Get(k string) (*tls.ClientSessionState, bool) { return h.from.Get(k) }
func (h handoff) Put(k string, cs *tls.ClientSessionState)     { h.to.Put(k, cs) }

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

// TestPromisesRetireWhilePartitioned: n2 holds three sessions n1 issued,
// and a child of the second that n2 issued resuming it, when its path to
// NATS breaks (cut, frozen, frozen until its client drops the connection);
// meanwhile n1 retires the first and revokes the second (its whole chain),
// which reach the store but not n2. Once n2's path is mended, neither
// session nor the child resumes on n2 (nor on n1), while the third, which
// the farm did not touch, is still in n2's cache and resumes there. After
// a gap (cut, frozen-dropped) it is n2's reconcile against the store and
// its re-read of the revocations that drop them; after a short freeze, the
// held messages. In broadcast mode n2 holds the bus copies; in store-only mode
// the copies it loaded from the store.
func TestPromisesRetireWhilePartitioned(t *testing.T) {
	t.Parallel()
	for _, f := range []fault{cut, frozen, frozenDropped} {
		for _, mode := range []farm.Mode{farm.Broadcast, farm.StoreOnly} {
			t.Run(f.name+"/"+mode.String(), func(t *testing.T) {
				t.Parallel()
				retireWhilePartitioned(t, f, mode)
			})
		}
	}
}

func retireWhilePartitioned(t *testing.T, f fault, mode farm.Mode) {
	ms, p, _, _ := promiseFarm(t, 2, mode, f, nil)
	ids, cs := farmtest.Issue(t, ms[0], 3)
	names := []string{"retired", "revoked", "control"}
	for i, id := range ids {
		farmtest.Eventually(t, 5*time.Second, names[i]+" session stored", func() bool { return stored(ms[0], id) })
		if mode == farm.StoreOnly && !resumes(t, ms[1], cs[i]) {
			t.Fatalf("the %s session did not resume on n2 from the store", names[i])
		}
		farmtest.Eventually(t, 5*time.Second, "n2 holds the "+names[i]+" session", func() bool { return holds(ms[1].Cache, id) })
	}
	// The session to revoke resumes on n2, which issues a child of it (of
	// its resumption chain): n2 holds it and so does the store, and
	// nothing but the revocation's tombstone says it must go.
	newOnN2 := farmtest.HandshakeSessions(ms[1].Cache)
	child := &tlstest.FrozenCache{}
	if !tlstest.MustDial(t, ms[1].Server.Addr, farmtest.Client(tls.VersionTLS13, handoff{cs[1], child})).DidResume {
		t.Fatal("the session to revoke did not resume on n2")
	}
	if got := newOnN2(); len(got) != 1 {
		t.Fatalf("n2 issued %d sessions resuming one", len(got))
	}
	ids, cs, names = append(ids, newOnN2()[0]), append(cs, child), append(names, "revoked's child")
	farmtest.Eventually(t, 5*time.Second, "the child stored", func() bool { return stored(ms[1], ids[3]) })
	recon := farmtest.Counter(ms[1].Node.Metrics(), "tlsfarm_farm_reconcile_total", "result", "checked")

	f.down(p.proxy(1))
	broken := time.Now()
	t.Logf("n2 saw its path to NATS break after %v", disconnected(t, ms[1]).Round(time.Millisecond))
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
	if f.gap {
		// Until n2's client gives up the connection, and a little more.
		for ms[1].Bus.(*natsbus.Transport).Conn().IsConnected() {
			time.Sleep(10 * time.Millisecond)
		}
	}
	time.Sleep(300 * time.Millisecond)
	for i, id := range ids {
		if !holds(ms[1].Cache, id) {
			t.Fatalf("n2 dropped the %s session while its path was broken: the test would not show how it learns", names[i])
		}
	}
	for _, i := range []int{0, 1, 3} {
		if resumes(t, ms[0], cs[i]) {
			t.Fatalf("the %s session resumed on n1 while n2's path was broken", names[i])
		}
	}

	f.up(p.proxy(1))
	back := time.Now()
	farmtest.WaitConnected(t, ms[1])
	connected := time.Since(back)
	for _, i := range []int{0, 1, 3} {
		farmtest.Eventually(t, 10*time.Second, "n2 dropped the "+names[i]+" session", func() bool { return !holds(ms[1].Cache, ids[i]) })
	}
	t.Logf("path broken for %v; n2 connected %v after it was mended, and had dropped the three sessions %v after",
		back.Sub(broken).Round(time.Millisecond), connected.Round(time.Millisecond), time.Since(back).Round(time.Millisecond))
	if !holds(ms[1].Cache, ids[2]) {
		t.Fatal("n2 dropped the control session: its cache was dropped, not reconciled")
	}
	if n := farmtest.Counter(ms[1].Node.Metrics(), "tlsfarm_farm_reconcile_total", "result", "checked") - recon; f.gap && n == 0 {
		t.Fatal("n2 checked no session against the store after the gap")
	}
	for _, m := range ms {
		for _, i := range []int{0, 1, 3} {
			if resumes(t, m, cs[i]) {
				farmtest.LogStats(t, ms)
				t.Fatalf("the %s session resumed on %s after n2's path was mended", names[i], m.Name)
			}
		}
	}
	if !resumes(t, ms[1], cs[2]) {
		farmtest.LogStats(t, ms)
		t.Fatal("the control session did not resume on n2 after its path was mended")
	}
}

// TestPromisesRevokeWhileHung: n1's path to NATS hangs (no byte passes,
// the connection stays open) and n1 revokes a session n2 holds. The
// revocation is pending: in force on n1, held and retried. Once the path
// thaws it reaches the store and n2, nothing is pending, and the session
// resumes on no node, including n3, which joins afterwards with an empty
// cache. Frozen for less than the client's ping timeout (the held bytes go
// through at the thaw), and for more, the revocation made once the client
// has dropped the connection (it makes a new one after the thaw): with
// nats.go's reconnect buffer, and without (then only the node's retry
// brings the revocation to the farm).
func TestPromisesRevokeWhileHung(t *testing.T) {
	t.Parallel()
	for _, f := range []fault{frozen, frozenDropped, frozenUnbuffered} {
		t.Run(f.name, func(t *testing.T) {
			t.Parallel()
			ms, p, o, name := promiseFarm(t, 2, farm.Broadcast, f, nil)
			ids, cs := farmtest.Issue(t, ms[0], 1)
			id, c := ids[0], cs[0]
			farmtest.Eventually(t, 5*time.Second, "the session stored", func() bool { return stored(ms[0], id) })
			farmtest.Eventually(t, 5*time.Second, "n2 holds the session", func() bool { return holds(ms[1].Cache, id) })

			f.down(p.proxy(0))
			hung := time.Now()
			if f.gap {
				// Revoke once n1's client has given up the connection:
				// what it sent before lands when the proxy thaws, but
				// this must be sent again.
				for ms[0].Bus.(*natsbus.Transport).Conn().IsConnected() {
					time.Sleep(10 * time.Millisecond)
				}
			}
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
			time.Sleep(time.Second)
			if !holds(ms[1].Cache, id) || !stored(ms[1], id) {
				t.Fatal("the revocation reached n2 or the store through a hung connection")
			}

			f.up(p.proxy(0))
			back := time.Now()
			farmtest.Eventually(t, 10*time.Second, "the revocation reached n2", func() bool { return !holds(ms[1].Cache, id) })
			farmtest.Eventually(t, 10*time.Second, "the revocation reached the store", func() bool { return !stored(ms[1], id) })
			farmtest.Eventually(t, 10*time.Second, "none pending", func() bool {
				return farmtest.Counter(ms[0].Node.Metrics(), "tlsfarm_farm_pending_revocations") == 0
			})
			t.Logf("NATS hung for n1 %v; revocation applied farm-wide %v after the thaw",
				back.Sub(hung).Round(time.Millisecond), time.Since(back).Round(time.Millisecond))
			farmtest.WaitConnected(t, ms...)
			n3 := farmtest.Join(t, "n3", name, *o)
			farmtest.WaitConnected(t, n3)
			for _, m := range append(ms, n3) {
				if resumes(t, m, c) {
					farmtest.LogStats(t, ms)
					t.Fatalf("the revoked session resumed on %s", m.Name)
				}
			}
		})
	}
}

// TestPromisesSingleUseWhilePartitioned: with single-use sessions, n2's
// path to NATS is cut, or frozen. A session n1 issued before (which n2
// holds a copy of in broadcast mode) and one issued meanwhile do not
// resume on n2 while it cannot take them from the store; n1 resumes the
// first. After n2's path is mended, over the whole test, each resumes at
// most once in the farm; after a cut the second resumes once on n2.
func TestPromisesSingleUseWhilePartitioned(t *testing.T) {
	t.Parallel()
	for _, f := range []fault{cut, frozen} {
		for _, mode := range []farm.Mode{farm.Broadcast, farm.StoreOnly} {
			t.Run(f.name+"/"+mode.String(), func(t *testing.T) {
				t.Parallel()
				singleUseWhilePartitioned(t, f, mode)
			})
		}
	}
}

func singleUseWhilePartitioned(t *testing.T, f fault, mode farm.Mode) {
	ms, p, _, _ := promiseFarm(t, 2, mode, f, func(c *session.Config) { c.SingleUse = true })
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
	ids, before := farmtest.Issue(t, ms[0], 1)
	farmtest.Eventually(t, 5*time.Second, "the first session stored", func() bool { return stored(ms[0], ids[0]) })
	if mode == farm.Broadcast {
		farmtest.Eventually(t, 5*time.Second, "n2 holds a copy of the first session", func() bool { return holds(ms[1].Cache, ids[0]) })
	}

	f.down(p.proxy(1))
	disconnected(t, ms[1])
	ids2, during := farmtest.Issue(t, ms[0], 1)
	farmtest.Eventually(t, 5*time.Second, "the second session stored", func() bool { return stored(ms[0], ids2[0]) })
	for range 3 {
		if try(ms[1], 0, before[0]) || try(ms[1], 1, during[0]) {
			farmtest.LogStats(t, ms)
			t.Fatal("a single-use session resumed on n2 while n2 could not reach the store")
		}
	}
	if !try(ms[0], 0, before[0]) {
		t.Fatal("the first session did not resume on n1, which reaches the store")
	}

	f.up(p.proxy(1))
	farmtest.WaitConnected(t, ms[1])
	for _, m := range ms {
		try(m, 0, before[0])
	}
	if f.gap {
		resumedOnN2 := false
		farmtest.Eventually(t, 5*time.Second, "the second session resumed on n2 once it reached the store", func() bool {
			resumedOnN2 = resumedOnN2 || try(ms[1], 1, during[0])
			return resumedOnN2
		})
	}
	for _, m := range ms {
		try(m, 0, before[0])
		try(m, 1, during[0])
	}
	t.Logf("resumes in the farm: %v; consumes on n2: %d consumed, %d refused, %d errors", count,
		farmtest.Counter(ms[1].Node.Metrics(), "tlsfarm_farm_consumes_total", "result", "consumed"),
		farmtest.Counter(ms[1].Node.Metrics(), "tlsfarm_farm_consumes_total", "result", "refused"),
		farmtest.Counter(ms[1].Node.Metrics(), "tlsfarm_farm_consumes_total", "result", "error"))
}
