package farm_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// A gateFarm is the farm the hit-gate tests (gate*_test.go) run on: a
// broadcast, write-through farm of two nodes on a Redis server of the
// test's own, n1's bus on a proxy of its own (bus1; its store reached
// directly), n2's bus and its store each on one (bus2, store2). n2's hits
// are the ones gated: a test breaks or slows bus2 so that n2's delivery
// lags, and reads gated to see what n2's gate made of them.
type gateFarm struct {
	t      *testing.T
	srv    *redistest.Server
	admin  *redis.Client // the server, reached directly
	maxLag time.Duration // the nodes' MaxDeliveryLag

	bus1, bus2, store2 *nettest.Proxy
	ms                 []*farmtest.Member
	n1, n2             *farmtest.Member

	sid      session.ID             // S's, once issue has issued it
	sessions []*tlstest.FrozenCache // the clients of the sessions issue issued on n2, S first
}

// gateFarmOptions say what differs between the hit-gate tests' farms.
type gateFarmOptions struct {
	MaxLag time.Duration      // the nodes' MaxDeliveryLag
	Tweak  func(*farm.Config) // if set, edits each node's configuration last (timeouts)
	// TweakCache, if set, edits each node's cache configuration (a short
	// ResumeGrace, say).
	TweakCache func(*session.Config)
	Logger     *slog.Logger // the nodes' (default: discard)
	// N2StoreUser, if set ("user:password"), is the Redis user n2's
	// store connects as (through store2); BeforeStart creates it.
	N2StoreUser string
	// CloseServer makes the nodes' test servers close each connection
	// once its handshake is done (farmtest.Options.CloseServer), as a
	// client that waits for the server's end (openssl s_client
	// -ign_eof) needs.
	CloseServer bool
	// BeforeStart, if set, runs once the server and its proxies are up,
	// before the nodes start (to create N2StoreUser, say).
	BeforeStart func(g *gateFarm)
}

// newGateFarm starts a gateFarm and waits until both nodes are connected
// and know the farm's revocations. When the test ends it lets the server
// take writes again and thaws, restores and speeds up every proxy, before
// the nodes close.
func newGateFarm(t *testing.T, o gateFarmOptions) *gateFarm {
	t.Helper()
	srv := redistest.Start(t)
	g := &gateFarm{t: t, srv: srv, maxLag: o.MaxLag}
	g.admin = redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { g.admin.Close() })
	g.bus1, g.bus2, g.store2 = nettest.NewProxy(t, srv.Addr()), nettest.NewProxy(t, srv.Addr()), nettest.NewProxy(t, srv.Addr())
	if o.BeforeStart != nil {
		o.BeforeStart(g)
	}
	rs := redisServer(srv.URL())
	store2 := redisServer(srv.URL())
	if o.N2StoreUser != "" {
		store2 = redisServer(strings.Replace(srv.URL(), "redis://", "redis://"+o.N2StoreUser+"@", 1))
	}
	joined := 0
	g.ms, _ = farmtest.Start(t, 2, &farmtest.Options{
		Mode: farm.Broadcast, WriteThrough: true,
		Logger: o.Logger, TweakCache: o.TweakCache, CloseServer: o.CloseServer,
		NewTransport: func(tb testing.TB, farmName string) (transport.Bus, transport.Store) {
			joined++
			if joined == 1 {
				bus, _ := rs.Open(tb, g.bus1.Addr, farmName)
				_, store := rs.Open(tb, srv.Addr(), farmName)
				return bus, store
			}
			bus, _ := rs.Open(tb, g.bus2.Addr, farmName)
			_, store := store2.Open(tb, g.store2.Addr, farmName)
			return bus, store
		},
		Tweak: func(c *farm.Config) {
			c.MaxDeliveryLag = o.MaxLag
			c.TallyInterval = -1
			if o.Tweak != nil {
				o.Tweak(c)
			}
		},
	})
	g.n1, g.n2 = g.ms[0], g.ms[1]
	farmtest.WaitConnected(t, g.ms...)
	farmtest.WaitRevocationsKnown(t, g.ms...)
	// Before the nodes close (cleanups run last registered first).
	t.Cleanup(func() {
		g.admin.Do(context.Background(), "CLIENT", "UNPAUSE")
		for _, px := range []*nettest.Proxy{g.bus1, g.bus2, g.store2} {
			px.Thaw()
			px.SetLatency(0)
			px.Restore()
		}
	})
	return g
}

// dial dials m with the client session cache c (a full handshake, or a
// resumption of the session c holds) and reports whether it resumed.
func (g *gateFarm) dial(m *farmtest.Member, c tls.ClientSessionCache) bool {
	g.t.Helper()
	return tlstest.MustDial(g.t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume
}

// issue issues n sessions on n2, S first (g.sid, g.sessions), and waits
// until n1 holds S and n2 has written all n to the store.
func (g *gateFarm) issue(n int) {
	g.t.Helper()
	ids := farmtest.HandshakeSessions(g.n2.Cache)
	for range n {
		c := &tlstest.FrozenCache{}
		g.dial(g.n2, c)
		g.sessions = append(g.sessions, c)
	}
	g.sid = ids()[0]
	farmtest.Eventually(g.t, 10*time.Second, "n1 holds S, and the store has it", func() bool {
		held := false
		for id := range g.n1.Cache.Snapshot(-1) {
			held = held || id == g.sid
		}
		return held && farmtest.Counter(g.n2.Node.Metrics(), "tlsfarm_farm_store_writes_total") >= uint64(n)
	})
}

// marks returns how many chain marks the store holds.
func (g *gateFarm) marks() int {
	g.t.Helper()
	keys, _, err := g.admin.Scan(g.t.Context(), 0, "*"+farm.ChainMarkPrefix+"*", 1000).Result()
	if err != nil {
		g.t.Fatal(err)
	}
	return len(keys)
}

// revokeWhileBusFrozen freezes n1's bus and revokes S on n1: pending (n2
// never hears of it), until its chain mark is in the store.
func (g *gateFarm) revokeWhileBusFrozen() {
	g.t.Helper()
	g.bus1.Freeze()
	if n := g.marks(); n != 0 {
		g.t.Fatalf("%d chain marks in the store before the revocation", n)
	}
	rctx, cancel := context.WithTimeout(g.t.Context(), 500*time.Millisecond)
	st, err := g.n1.Node.RevokeSession(rctx, g.sid)
	cancel()
	if st != farm.RevokePending {
		g.t.Fatalf("RevokeSession = %v, %v; want pending (n1's bus frozen)", st, err)
	}
	farmtest.Eventually(g.t, 10*time.Second, "S's chain mark in the store", func() bool { return g.marks() == 1 })
}

// revokeApplied revokes S on n1, which must report it applied.
func (g *gateFarm) revokeApplied(ctx context.Context) {
	g.t.Helper()
	if st, err := g.n1.Node.RevokeSession(ctx, g.sid); err != nil || st != farm.RevokeApplied {
		g.t.Fatalf("RevokeSession = %v, %v", st, err)
	}
}

// lagDelivery slows n2's bus path by slow each way and waits until n2's
// delivery lags past twice MaxDeliveryLag (its hits gated, its bus
// subscription up).
func (g *gateFarm) lagDelivery(slow time.Duration) {
	g.t.Helper()
	g.lagPast(slow, 2*g.maxLag)
}

// lagPast is lagDelivery, waiting until n2's delivery lags past d.
func (g *gateFarm) lagPast(slow, d time.Duration) {
	g.t.Helper()
	g.bus2.SetLatency(slow)
	marker := g.n2.Bus.(transport.DeliveryMarker)
	farmtest.Eventually(g.t, 10*time.Second, "n2's delivery lags", func() bool {
		at := marker.DeliveredThrough()
		return !at.IsZero() && time.Since(at) > d
	})
}

// waitBusBroken waits, once the test has frozen or cut n2's bus path,
// until n2's delivery lags past twice MaxDeliveryLag or has no mark at
// all (its subscription down).
func (g *gateFarm) waitBusBroken() {
	g.t.Helper()
	marker := g.n2.Bus.(transport.DeliveryMarker)
	farmtest.Eventually(g.t, 10*time.Second, "n2's delivery lags", func() bool {
		d := marker.DeliveredThrough()
		return d.IsZero() || time.Since(d) > 2*g.maxLag
	})
}

// gated returns n2's gated hits that ended in result.
func (g *gateFarm) gated(result string) uint64 {
	return farmtest.Counter(g.n2.Node.Metrics(), "tlsfarm_farm_gated_hits_total", "result", result)
}

// gatedCounts lists n2's gated hits by result, for a test's log.
func (g *gateFarm) gatedCounts() string {
	return fmt.Sprintf("confirmed %d, revoked %d, store_error %d, cut_off %d, retired %d",
		g.gated("confirmed"), g.gated("revoked"), g.gated("store_error"), g.gated("cut_off"), g.gated("retired"))
}
