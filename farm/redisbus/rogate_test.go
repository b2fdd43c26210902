package redisbus_test

import (
	"context"
	"crypto/tls"
	"strconv"
	"strings"
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

// TestClusterReadOnlyGateReadsMaster: a broadcast, write-through farm of
// two nodes whose store is a Redis Cluster of three masters with a replica
// each, its URL set read_only=true (reads go to replicas). n1's bus is the
// cluster too; n2's is a Redis of its own, reached through a proxy, so
// that n2 hears nothing n1 publishes and its delivery lags once the proxy
// is frozen: n2's hits are gated, and read the revocation marks from the
// store. n2 issues H and C, their records written through to the masters
// and replicated. Then every replica is cut off from its master (the
// replication link and the cluster bus frozen; clients still reach it),
// n2's bus stalls, and n1 revokes H, which it reports applied.
//
// n2 must not resume H, and still resumes C once the store confirms its
// chain. The gate's read of H's marks went to a replica, which answered
// "no mark" for as long as the cut lasted, and n2 resumed H.
func TestClusterReadOnlyGateReadsMaster(t *testing.T) {
	t.Parallel()
	const maxLag = 150 * time.Millisecond
	f := startReadOnlyGateFarm(t, maxLag, func(cfg *farm.Config) {
		// n2's stalled bus is not an outage: n2 counts it up for as
		// long as the test takes (a gated read that failed while it
		// counted its bus down would resume unchecked).
		cfg.ProbeTimeout = 10 * time.Second
	})
	n1, n2, cut, busPath, dial, h, cs, hid := f.n1, f.n2, f.cut, f.busPath, f.dial, f.h, f.cs, f.hid
	if b, ok := n2.Bus.(*redisbus.Transport); !ok || transport.Store(b) == n2.Store {
		t.Fatal("n2's bus is not a transport of its own")
	}

	// Every replica has what its master has (H's and C's records among
	// it) before the cut; and n2's bus stalls.
	cut()
	busPath.Freeze()
	t.Cleanup(busPath.Thaw)

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if st, err := n1.Node.RevokeSession(ctx, hid); err != nil || st != farm.RevokeApplied {
		t.Fatalf("RevokeSession = %v, %v", st, err)
	}
	marker := n2.Bus.(transport.DeliveryMarker)
	farmtest.Eventually(t, 5*time.Second, "n2's delivery lags", func() bool {
		return time.Since(marker.DeliveredThrough()) > 2*maxLag
	})
	gated := func(result string) uint64 {
		return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_gated_hits_total", "result", result)
	}
	if dial(n2, h) {
		t.Errorf("n2 resumed H, revoked on n1 (applied): its gate read a replica cut off from its master")
	}
	if !dial(n2, cs) {
		t.Errorf("n2 did not resume C, not revoked (gated hits: store_error %d, cut_off %d)", gated("store_error"), gated("cut_off"))
	}
	t.Logf("n2's gated hits: confirmed %d, revoked %d, store_error %d, cut_off %d",
		gated("confirmed"), gated("revoked"), gated("store_error"), gated("cut_off"))
	if gated("revoked") == 0 {
		t.Error("n2's gate found no revocation")
	}
}

// startCuttable starts a Redis Cluster of three masters with a replica
// each, the nodes reached through proxies and their cluster buses through
// others (redistest.StartClusterLinked), and returns it with cut, which
// waits until every replica has its master's writes, then cuts every
// replica off from its master both ways, as a partition would (the
// replication link and the cluster bus frozen), while clients still reach
// both, until the test ends.
func startCuttable(t *testing.T) (c *redistest.Cluster, cut func()) {
	proxies := map[string]*nettest.Proxy{} // by the node's own address
	buses := map[string]*nettest.Proxy{}   // the node's cluster bus, by its address
	c = redistest.StartClusterLinked(t, 3, 1, 10*time.Second, func(addr string) string {
		p := nettest.NewProxy(t, addr)
		proxies[addr] = p
		return p.Addr
	}, func(node, bus string) string {
		p := nettest.NewProxy(t, bus)
		buses[node] = p
		return p.Addr
	})
	// A fresh cluster lists no replica in CLUSTER SLOTS, and go-redis
	// then reads from the masters.
	c.WaitReplicasListed(30 * time.Second)
	offset := func(s *redistest.Server, field string) int64 {
		info, err := c.Client(s).Info(t.Context(), "replication").Result()
		if err != nil {
			t.Fatalf("INFO replication on %s: %v", s.Addr(), err)
		}
		for line := range strings.SplitSeq(info, "\r\n") {
			if v, ok := strings.CutPrefix(line, field+":"); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				return n
			}
		}
		return -1
	}
	return c, func() {
		t.Helper()
		masters := c.Masters()
		for _, m := range masters {
			want := offset(m, "master_repl_offset")
			for _, r := range c.ReplicasOf(m) {
				farmtest.Eventually(t, 10*time.Second, "a replica has its master's writes", func() bool {
					return offset(r, "slave_repl_offset") >= want
				})
			}
		}
		for _, m := range masters {
			link := proxies[m.Addr()]
			link.FreezeFrom(redistest.LinkSource)
			t.Cleanup(link.Thaw)
			for _, r := range c.ReplicasOf(m) {
				bus := buses[r.Addr()]
				bus.Freeze()
				t.Cleanup(bus.Thaw)
			}
		}
	}
}

// TestClusterReadOnlyPrimaryReads: on a Redis Cluster whose URL sets
// read_only=true, with every replica cut off from its master, a read under
// transport.PrimaryRead answers what the master holds (GetRecord,
// GetRecords, Get, SetVersion, SetMembers), and any other read still goes
// to a replica, which answers what it had before the cut.
func TestClusterReadOnlyPrimaryReads(t *testing.T) {
	t.Parallel()
	c, cut := startCuttable(t)
	tr, err := redisbus.Open(c.URL("read_only=true&reload=1s"), farmtest.FarmName(t))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx := t.Context()
	keys := []string{"a", "b", "c", "d", "e", "f"} // over several masters
	put := func(v string, prev []byte) {
		t.Helper()
		var items []transport.Item
		for _, k := range keys {
			items = append(items, transport.Item{Key: k, Value: []byte(v), TTL: time.Minute})
		}
		if err := tr.PutRecords(ctx, items...); err != nil {
			t.Fatal(err)
		}
		if ok, err := tr.CompareAndSwap(ctx, "g", prev, []byte(v), time.Minute); err != nil || !ok {
			t.Fatalf("CompareAndSwap = %v, %v", ok, err)
		}
		if err := tr.SetAdd(ctx, "s", []byte(v), time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	put("old", nil)
	oldVersion, err := tr.SetVersion(ctx, "s")
	if err != nil || oldVersion == nil {
		t.Fatalf("SetVersion = %x, %v", oldVersion, err)
	}
	cut()
	if err := tr.DeleteRecords(ctx, keys...); err != nil {
		t.Fatal(err)
	}
	put("new", []byte("old"))

	check := func(ctx context.Context, want string, wantVersion bool) {
		t.Helper()
		for _, k := range keys {
			if v, err := tr.GetRecord(ctx, k); err != nil || string(v) != want {
				t.Errorf("GetRecord(%s) = %q, %v; want %q", k, v, err, want)
			}
		}
		vs, err := tr.GetRecords(ctx, keys...)
		if err != nil {
			t.Fatal(err)
		}
		for i, v := range vs {
			if string(v) != want {
				t.Errorf("GetRecords: %s = %q, want %q", keys[i], v, want)
			}
		}
		v, err := tr.SetVersion(ctx, "s")
		if err != nil || (string(v) == string(oldVersion)) == wantVersion {
			t.Errorf("SetVersion = %x, %v (before the cut %x); want a new one: %v", v, err, oldVersion, wantVersion)
		}
		ms, err := tr.SetMembers(ctx, "s")
		if err != nil || len(ms) != 2 {
			// Read by a script, which go-redis sends to the master
			// either way.
			t.Errorf("SetMembers = %q, %v; want old and new", ms, err)
		}
	}
	check(transport.PrimaryRead(ctx), "new", true)
	if v, err := tr.Get(transport.PrimaryRead(ctx), "g"); err != nil || string(v) != "new" {
		t.Errorf("Get under PrimaryRead = %q, %v; want new", v, err)
	}
	// The ordinary reads still go to the replicas.
	check(ctx, "old", false)
	if v, err := tr.Get(ctx, "g"); err != nil || string(v) != "old" {
		t.Errorf("Get = %q, %v; want old (from a replica)", v, err)
	}
}

// TestClusterReadOnlyHealReadsMaster: the farm of
// TestClusterReadOnlyGateReadsMaster, every replica cut off from its
// master after n2 issued H and C. n2's bus is cut (its subscription down:
// a gap), n1 revokes H, which it reports applied, and n2's bus comes back.
// n2's heal must read the revocation before it closes the gap, so that n2
// does not resume H once its hits are no longer gated. The heal asked a
// replica for the version of the farm's revocations, which answered the
// one n2 had read before the cut: n2 took the set for unchanged, read
// none of it, closed the gap, and resumed H from its cache.
func TestClusterReadOnlyHealReadsMaster(t *testing.T) {
	t.Parallel()
	const maxLag = 150 * time.Millisecond
	f := startReadOnlyGateFarm(t, maxLag, func(cfg *farm.Config) {
		cfg.HealInterval = time.Hour // the heal on reconnect only
	})
	n1, n2, cut, busPath, dial, h, cs, hid := f.n1, f.n2, f.cut, f.busPath, f.dial, f.h, f.cs, f.hid
	gated := func() (n uint64) {
		for _, r := range []string{"confirmed", "revoked", "store_error", "cut_off"} {
			n += farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_gated_hits_total", "result", r)
		}
		return n
	}

	cut()
	busPath.Cut()
	t.Cleanup(busPath.Restore)
	farmtest.Eventually(t, 15*time.Second, "n2 finds its bus down", func() bool { return !n2.Node.Connected() })
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if st, err := n1.Node.RevokeSession(ctx, hid); err != nil || st != farm.RevokeApplied {
		t.Fatalf("RevokeSession = %v, %v", st, err)
	}
	busPath.Restore()
	farmtest.Eventually(t, 15*time.Second, "n2's bus is back", func() bool { return n2.Node.Connected() })
	// Once a hit of C is no longer gated, n2's heal has closed the gap.
	farmtest.Eventually(t, 15*time.Second, "n2's hits are no longer gated", func() bool {
		before := gated()
		return dial(n2, cs) && gated() == before
	})
	if dial(n2, h) {
		t.Errorf("n2 resumed H, revoked on n1 (applied) during its gap: its heal read a replica cut off from its master")
	}
	t.Logf("n2's tombstone reads: read %d, unchanged %d",
		farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_tombstone_reads_total", "result", "read"),
		farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_tombstone_reads_total", "result", "unchanged"))
}

// A readOnlyGateFarm is the farm of the read_only gate tests: n1 and n2
// with their store on a cluster (startCuttable) read through read_only,
// n1's bus the cluster too, n2's bus a Redis of its own behind busPath;
// n2 has issued H (ID hid) and C, and resumes both.
type readOnlyGateFarm struct {
	n1, n2  *farmtest.Member
	cut     func()
	busPath *nettest.Proxy
	h, cs   *tlstest.FrozenCache
	hid     session.ID
	dial    func(m *farmtest.Member, cc tls.ClientSessionCache) bool
}

// startReadOnlyGateFarm starts a readOnlyGateFarm whose nodes' delivery
// bound is maxLag, with tweak's settings on top.
func startReadOnlyGateFarm(t *testing.T, maxLag time.Duration, tweak func(*farm.Config)) *readOnlyGateFarm {
	t.Helper()
	c, cut := startCuttable(t)
	own := redistest.Start(t)
	busPath := nettest.NewProxy(t, own.Addr())
	storeURL := c.URL("read_only=true&reload=1s")
	joined := 0
	ms, _ := farmtest.Start(t, 2, &farmtest.Options{
		NewTransport: func(tb testing.TB, farmName string) (transport.Bus, transport.Store) {
			joined++
			if joined == 1 {
				return transportAt(storeURL)(tb, farmName)
			}
			bus, _ := transportAt("redis://"+busPath.Addr+"/0")(tb, farmName)
			_, store := transportAt(storeURL)(tb, farmName)
			return bus, store
		},
		Mode: farm.Broadcast, WriteThrough: true,
		Rotation:   &farm.RotationConfig{Interval: time.Hour},
		TweakCache: func(c *session.Config) { c.ResumeGrace = 10 * time.Second },
		Tweak: func(cfg *farm.Config) {
			cfg.MaxDeliveryLag = maxLag
			cfg.LookupTimeout = time.Second
			cfg.TallyInterval = -1
			tweak(cfg)
		},
	})
	f := &readOnlyGateFarm{n1: ms[0], n2: ms[1], cut: cut, busPath: busPath,
		h: &tlstest.FrozenCache{}, cs: &tlstest.FrozenCache{}}
	farmtest.WaitConnected(t, ms...)
	farmtest.WaitRevocationsKnown(t, ms...)
	f.dial = func(m *farmtest.Member, cc tls.ClientSessionCache) bool {
		t.Helper()
		return tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, cc)).DidResume
	}
	ids := farmtest.HandshakeSessions(f.n2.Cache)
	f.dial(f.n2, f.h)
	f.hid = ids()[len(ids())-1]
	f.dial(f.n2, f.cs)
	farmtest.Eventually(t, 5*time.Second, "n2 resumes H and C", func() bool { return f.dial(f.n2, f.h) && f.dial(f.n2, f.cs) })
	return f
}
