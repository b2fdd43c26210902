package natsbus_test

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/natstest"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestNATSPeerMarkRouteFrozen: the bus is a NATS cluster of two servers,
// X and Y, whose only route goes through a proxy; the store is a server
// of its own. n1 is on X, n2 on Y; n2 holds n1's broadcast copies of S
// and of a control session C. The route freezes (both connections stay
// up: nothing passes), and n1 revokes S, which it reports applied. n2's
// round trip to Y still says its delivery is current, but n1's
// revocation is held in the route: n2 must not resume S from the copy it
// holds (before the per-sender marks it did), and still resumes C, once
// its store confirms that C's chain is not revoked. Once the route
// thaws, n2 learns of the revocation by its bus and its hits stop asking
// the store; once n1 leaves (its last message says so), n2 waits for no
// answer from X.
func TestNATSPeerMarkRouteFrozen(t *testing.T) {
	t.Parallel()
	const maxLag = 150 * time.Millisecond
	route, ms := startPairFarm(t, maxLag, nil)
	n1, n2 := ms[0], ms[1]
	farmtest.WaitConnected(t, ms...)
	farmtest.WaitRevocationsKnown(t, ms...)
	// Before the nodes close (cleanups run last registered first).
	t.Cleanup(route.Thaw)

	dial := func(m *farmtest.Member, cc tls.ClientSessionCache) bool {
		t.Helper()
		return tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, cc)).DidResume
	}
	gated := func(result string) uint64 {
		return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_gated_hits_total", "result", result)
	}
	holds := func(ids ...session.ID) bool {
		have := map[session.ID]bool{}
		for id := range n2.Cache.Snapshot(-1) {
			have[id] = true
		}
		for _, id := range ids {
			if !have[id] {
				return false
			}
		}
		return true
	}
	ids := farmtest.HandshakeSessions(n1.Cache)
	s, cs := &tlstest.FrozenCache{}, &tlstest.FrozenCache{}
	dial(n1, s)
	dial(n1, cs)
	sid, cid := ids()[0], ids()[1]
	farmtest.Eventually(t, 5*time.Second, "n2 holds S and C", func() bool { return holds(sid, cid) })
	// n2 resumes C from its copy without asking the store: both marks
	// are current.
	farmtest.Eventually(t, 5*time.Second, "n2's hits not gated", func() bool {
		before := gated("confirmed")
		return dial(n2, cs) && gated("confirmed") == before
	})

	// What the marks cost: one message per node each interval (a fifth
	// of MaxDeliveryLag here), received by every other node.
	marks := func(m *farmtest.Member, event string) uint64 {
		return farmtest.Counter(m.Node.Metrics(), "tlsfarm_farm_delivery_marks_total", "event", event)
	}
	sent0, recv0, at := marks(n2, "sent"), marks(n2, "received"), time.Now()
	time.Sleep(time.Second)
	el := time.Since(at).Seconds()
	t.Logf("n2's delivery marks: %.1f sent/s, %.1f received/s", float64(marks(n2, "sent")-sent0)/el, float64(marks(n2, "received")-recv0)/el)
	if marks(n2, "sent") == sent0 || marks(n2, "received") == recv0 {
		t.Error("n2 sent or received no delivery marks")
	}

	route.Freeze()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if st, err := n1.Node.RevokeSession(ctx, sid); err != nil || st != farm.RevokeApplied {
		t.Fatalf("RevokeSession = %v, %v", st, err)
	}
	bus := n2.Bus.(transport.DeliveryMarker).DeliveredThrough()
	if dial(n2, s) {
		t.Errorf("n2 resumed S, revoked on n1 (applied), from the copy it held; its server's mark %v old", time.Since(bus).Round(time.Millisecond))
	}
	if !dial(n2, cs) {
		t.Error("n2 did not resume C (not revoked), its store reachable")
	}
	confirmed, revoked := gated("confirmed"), gated("revoked")
	t.Logf("n2's gated hits in the freeze: confirmed %d, revoked %d", confirmed, revoked)
	if confirmed == 0 || revoked == 0 {
		t.Errorf("n2's gated hits: confirmed %d, revoked %d; want both", confirmed, revoked)
	}

	route.Thaw()
	farmtest.Eventually(t, 5*time.Second, "n2's hits not gated after the thaw", func() bool {
		before := gated("confirmed")
		return dial(n2, cs) && gated("confirmed") == before
	})
	if dial(n2, s) {
		t.Error("n2 resumed S after the thaw")
	}

	// n1 leaves, and says so last: n2, with no peer left on X, waits
	// for none (past MaxDeliveryLag, n1's last answer would gate it).
	// (Eventually: on a loaded machine n2's own mark may lag a moment.)
	n1.Node.Close()
	farmtest.Eventually(t, 5*time.Second, "n2's hits not gated after n1, the only node on X, left", func() bool {
		time.Sleep(maxLag) // past the bound since n1's last answer
		before := gated("confirmed")
		return dial(n2, cs) && gated("confirmed") == before
	})
}

// startPairFarm starts a broadcast write-through farm of two members on a
// NATS cluster of two servers, X and Y, whose only route goes through the
// proxy it returns: n1's bus is on X, n2's on Y; their store is a server of
// its own. tweak, if set, edits the options last. It waits until both
// nodes are up and know the farm's revocations, and thaws the route before
// the nodes close.
func startPairFarm(t *testing.T, maxLag time.Duration, tweak func(*farmtest.Options)) (*nettest.Proxy, []*farmtest.Member) {
	t.Helper()
	var route *nettest.Proxy
	c := natstest.StartPairVia(t, func(addr string) string {
		route = nettest.NewProxy(t, addr)
		return route.Addr
	})
	storeURL := embedded(t)
	joined := 0
	o := &farmtest.Options{
		Mode: farm.Broadcast, WriteThrough: true,
		NewTransport: func(tb testing.TB, farmName string) (transport.Bus, transport.Store) {
			bus, err := natsbus.Open(c.Servers[joined].ClientURL(), farmName, nil)
			if err != nil {
				tb.Fatal(err)
			}
			joined++
			tb.Cleanup(func() { bus.Close() })
			store, err := natsbus.Open(storeURL, farmName, nil)
			if err != nil {
				tb.Fatal(err)
			}
			tb.Cleanup(func() { store.Close() })
			return bus, store
		},
		Tweak: func(cfg *farm.Config) {
			cfg.MaxDeliveryLag = maxLag
			cfg.LookupTimeout = time.Second
			cfg.TallyInterval = -1
		},
	}
	if tweak != nil {
		tweak(o)
	}
	ms, _ := farmtest.Start(t, 2, o)
	farmtest.WaitConnected(t, ms...)
	farmtest.WaitRevocationsKnown(t, ms...)
	// Before the nodes close (cleanups run last registered first).
	t.Cleanup(route.Thaw)
	return route, ms
}

// TestNATSPeerMarkRouteFrozenCarried: as TestNATSPeerMarkRouteFrozen, with
// carried sessions (farm-wide ticket keys): the route freezes, n1 issues S
// (its message held in the route, its ticket carrying it) and revokes it,
// applied. n2, which never held S, is presented S's ticket: it must not
// take the carried copy (before the per-server marks it did, its own
// server's mark current), and S resumes nowhere. A session n1 issues
// after the thaw resumes on n2.
func TestNATSPeerMarkRouteFrozenCarried(t *testing.T) {
	t.Parallel()
	const maxLag = 150 * time.Millisecond
	route, ms := startPairFarm(t, maxLag, func(o *farmtest.Options) {
		o.Rotation = &farm.RotationConfig{Interval: time.Hour}
		o.TweakCache = func(c *session.Config) { c.ResumeGrace = 10 * time.Second }
		tweak := o.Tweak
		o.Tweak = func(c *farm.Config) {
			tweak(c)
			c.CarrySessions = true
			c.MaxSkew = 100 * time.Millisecond
			c.WriteThroughTimeout = 2 * time.Second
		}
	})
	n1, n2 := ms[0], ms[1]
	time.Sleep(300 * time.Millisecond) // past MaxSkew after each node began to reach the farm
	dial := func(m *farmtest.Member, cc tls.ClientSessionCache) bool {
		t.Helper()
		return tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, cc)).DidResume
	}
	carried := func(result string) uint64 {
		return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_carried_total", "result", result)
	}
	issued := func() uint64 {
		return farmtest.Counter(n1.Cache.Metrics(), "tlsfarm_cache_carried_total", "result", "issued")
	}
	farmtest.Eventually(t, 10*time.Second, "n1 issues carried tickets", func() bool {
		dial(n1, &tlstest.FrozenCache{})
		return issued() > 0
	})

	route.Freeze()
	ids := farmtest.HandshakeSessions(n1.Cache)
	s := &tlstest.FrozenCache{}
	before := issued()
	dial(n1, s)
	sid := ids()[0]
	if issued() == before {
		t.Fatal("n1 issued S's ticket without its session")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if st, err := n1.Node.RevokeSession(ctx, sid); err != nil || st != farm.RevokeApplied {
		t.Fatalf("RevokeSession = %v, %v", st, err)
	}
	if dial(n2, s) {
		t.Errorf("n2 resumed S, revoked on n1 (applied), from its carried copy (admitted %d, lagging %d)", carried("admitted"), carried("lagging"))
	}
	if carried("admitted") != 0 {
		t.Errorf("n2 admitted %d carried copies with the route from X frozen", carried("admitted"))
	}
	if dial(n1, s) {
		t.Error("n1 resumed S, which it revoked")
	}

	route.Thaw()
	after := &tlstest.FrozenCache{}
	dial(n1, after)
	farmtest.Eventually(t, 5*time.Second, "n2 resumes a session n1 issued after the thaw", func() bool { return dial(n2, after) })
	if dial(n2, s) {
		t.Error("n2 resumed S after the thaw")
	}
}
