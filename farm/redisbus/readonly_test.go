package redisbus_test

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestClusterReadOnlyMarkOrdersMaster: a broadcast, write-through farm of
// two nodes with carried sessions on a Redis Cluster of three masters with
// a replica each, its URL set read_only=true. Clients reach each node
// through a proxy, and the nodes reach each other's cluster bus through
// one too (redistest.StartClusterLinked). n2 holds n1's broadcast copy of
// H. Then the replica of the channel's master is cut off from its master
// (its replication link and its cluster bus frozen; clients still reach
// both), n1 issues S and C (their messages held back from the replica,
// their tickets carrying them) and revokes H and S, which it reports
// applied.
//
// n2 must not resume H from its copy nor take S's carried copy, and still
// takes C's. go-redis sent a read_only cluster client's SSUBSCRIBE to a
// replica of the channel's slot, which gets the master's sharded messages
// over the cluster bus: the subscription's marking PING was answered in
// line with what the replica had, not with what the master took, so n2's
// mark said current while the revocations were held back, and n2 resumed
// both H and S.
func TestClusterReadOnlyMarkOrdersMaster(t *testing.T) {
	t.Parallel()
	const maxLag = 150 * time.Millisecond
	proxies := map[string]*nettest.Proxy{} // by the node's own address
	buses := map[string]*nettest.Proxy{}   // the node's cluster bus, by its address
	c := redistest.StartClusterLinked(t, 3, 1, 10*time.Second, func(addr string) string {
		p := nettest.NewProxy(t, addr)
		proxies[addr] = p
		return p.Addr
	}, func(node, bus string) string {
		p := nettest.NewProxy(t, bus)
		buses[node] = p
		return p.Addr
	})
	// A fresh cluster lists no replica in CLUSTER SLOTS, and go-redis then
	// subscribes on the master.
	c.WaitReplicasListed(30 * time.Second)
	ms, _ := farmtest.Start(t, 2, &farmtest.Options{
		NewTransport: transportAt(c.URL("read_only=true&reload=1s")),
		Mode:         farm.Broadcast, WriteThrough: true,
		Rotation:   &farm.RotationConfig{Interval: time.Hour},
		TweakCache: func(c *session.Config) { c.ResumeGrace = 10 * time.Second },
		Tweak: func(cfg *farm.Config) {
			cfg.MaxDeliveryLag = maxLag
			cfg.LookupTimeout = time.Second
			cfg.TallyInterval = -1
			cfg.CarrySessions = true
			cfg.MaxSkew = 100 * time.Millisecond
			cfg.WriteThroughTimeout = 2 * time.Second
		},
	})
	n1, n2 := ms[0], ms[1]
	farmtest.WaitConnected(t, ms...)
	farmtest.WaitRevocationsKnown(t, ms...)
	time.Sleep(300 * time.Millisecond) // past MaxSkew after each node began to reach the farm

	channel := n1.Bus.(*redisbus.Transport).Channel()
	home := c.MasterOf(redistest.Slot(channel))
	if home == nil {
		t.Fatalf("no master holds the channel's slot: %s", c.NodesText())
	}
	link := proxies[home.Addr()]
	// Before the nodes close (cleanups run last registered first).
	t.Cleanup(link.Thaw)
	// Where the nodes' subscriptions are: the master's count, and its
	// replicas'.
	where := func() (int64, int64) {
		count := func(s *redistest.Server) int64 {
			r, err := c.Client(s).PubSubShardNumSub(t.Context(), channel).Result()
			if err != nil {
				t.Fatalf("PUBSUB SHARDNUMSUB on %s: %v", s.Addr(), err)
			}
			return r[channel]
		}
		onReplicas := int64(0)
		for _, r := range c.ReplicasOf(home) {
			onReplicas += count(r)
		}
		return count(home), onReplicas
	}

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
	holds := func(id session.ID) bool {
		for have := range n2.Cache.Snapshot(-1) {
			if have == id {
				return true
			}
		}
		return false
	}
	farmtest.Eventually(t, 10*time.Second, "n1 issues carried tickets", func() bool {
		dial(n1, &tlstest.FrozenCache{})
		return issued() > 0
	})
	ids := farmtest.HandshakeSessions(n1.Cache)
	h := &tlstest.FrozenCache{}
	dial(n1, h)
	hid := ids()[len(ids())-1]
	farmtest.Eventually(t, 5*time.Second, "n2 holds H", func() bool { return holds(hid) })

	replicas := c.ReplicasOf(home)
	if len(replicas) != 1 {
		t.Fatalf("%d replicas of the channel's master, want 1: %s", len(replicas), c.NodesText())
	}
	// Cut the replica off from its master both ways (as a partition
	// would), while clients reach both.
	link.FreezeFrom(redistest.LinkSource)
	bus := buses[replicas[0].Addr()]
	bus.Freeze()
	t.Cleanup(bus.Thaw)
	s, cs := &tlstest.FrozenCache{}, &tlstest.FrozenCache{}
	before := issued()
	dial(n1, s)
	sid := ids()[len(ids())-1]
	dial(n1, cs)
	if issued() < before+2 {
		t.Fatal("n1 issued S's or C's ticket without its session")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for _, id := range []session.ID{hid, sid} {
		if st, err := n1.Node.RevokeSession(ctx, id); err != nil || st != farm.RevokeApplied {
			t.Fatalf("RevokeSession = %v, %v", st, err)
		}
	}
	onMaster, onReplicas := where()
	t.Logf("subscriptions to the channel: %d on its master, %d on its replica; the link holds %d reads", onMaster, onReplicas, link.Holding())
	gated := func(result string) uint64 {
		return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_gated_hits_total", "result", result)
	}
	t.Logf("n2's delivery mark %v old", time.Since(n2.Bus.(transport.DeliveryMarker).DeliveredThrough()).Round(time.Millisecond))
	if dial(n2, h) {
		t.Errorf("n2 resumed H, revoked on n1 (applied), from the copy it held")
	}
	if dial(n2, s) {
		t.Errorf("n2 resumed S, revoked on n1 (applied), from its carried copy (admitted %d)", carried("admitted"))
	}
	if !dial(n2, cs) {
		t.Errorf("n2 did not resume C, not revoked, from its carried copy (lagging %d)", carried("lagging"))
	}
	t.Logf("n2: carried admitted %d, lagging %d; gated hits confirmed %d, revoked %d", carried("admitted"), carried("lagging"), gated("confirmed"), gated("revoked"))
	if onReplicas != 0 {
		t.Errorf("%d subscriptions to the channel on its master's replica, want 0", onReplicas)
	}

	link.Thaw()
	bus.Thaw()
	after := &tlstest.FrozenCache{}
	dial(n1, after)
	farmtest.Eventually(t, 5*time.Second, "n2 resumes a session n1 issued after the thaw", func() bool { return dial(n2, after) })
	if dial(n2, s) || dial(n2, h) {
		t.Error("n2 resumed S or H after the thaw")
	}
}
