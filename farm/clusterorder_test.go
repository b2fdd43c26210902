package farm_test

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// clusterViaProxies returns NewTransport for a farm on the Redis Cluster
// c, bus and store in one transport: the first member it opens reaches
// each master through a nettest.Proxy of its own (in proxies, by the
// master's address), as the cluster names it; the others reach the
// cluster directly.
func clusterViaProxies(t *testing.T, c *redistest.Cluster, proxies map[string]*nettest.Proxy) func(testing.TB, string) (transport.Bus, transport.Store) {
	for _, m := range c.Masters() {
		proxies[m.Addr()] = nettest.NewProxy(t, m.Addr())
	}
	direct := redisTransport(c.URL(""))
	opened := 0
	return func(tb testing.TB, farmName string) (transport.Bus, transport.Store) {
		if opened++; opened > 1 {
			return direct(tb, farmName)
		}
		opt := &redis.ClusterOptions{ContextTimeoutEnabled: true}
		for _, s := range c.Nodes {
			opt.Addrs = append(opt.Addrs, s.Addr())
		}
		opt.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
			if p, ok := proxies[addr]; ok {
				addr = p.Addr
			}
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}
		cl := redis.NewClusterClient(opt)
		tb.Cleanup(func() { cl.Close() })
		tr, err := redisbus.New(cl, farmName)
		if err != nil {
			tb.Fatal(err)
		}
		return tr, tr
	}
}

// TestClusterPeersCutBeforeFirstWrite is the narrow order the design left
// open on a Redis Cluster with bus and store in one transport: n1's one
// round trip for a new session S sends its SET to the shard of S's record
// and its SPUBLISH to the shard of the farm's channel at once, and the
// two need not land in that order. Here the SET is held (n1 reaches the
// record's shard through a frozen proxy) while the publish brings S to n2
// at once. The client resumes S on n2, whose cut of S's record finds none
// yet; then n1's SET lands, whole. n2's child, which carries the cut,
// reaches n1 while its write is in flight ("heard-in-flight"), or after
// it returned ("heard-after": n1's channel shard is frozen too). Past S's
// grace no node may resume S: not n2, whose cut copy has lapsed, nor n3,
// joining later; and the store must hold S cut, not whole.
func TestClusterPeersCutBeforeFirstWrite(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t, 3, 0, 2*time.Second)
	rc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{c.Nodes[0].Addr()}})
	defer rc.Close()
	for _, heardAfter := range []bool{false, true} {
		name := "heard-in-flight"
		if heardAfter {
			name = "heard-after"
		}
		t.Run(name, func(t *testing.T) {
			const grace = 2 * time.Second
			proxies := map[string]*nettest.Proxy{}
			o := &farmtest.Options{Mode: farm.Broadcast, NewTransport: clusterViaProxies(t, c, proxies),
				TweakCache: func(c *session.Config) { c.ResumeGrace = grace },
				Tweak: func(c *farm.Config) {
					c.OpTimeout = 10 * time.Second // n1's held write must not time out
					c.TallyInterval = -1           // n1 publishes nothing while a shard is frozen
				}}
			ms, farmName := farmtest.Start(t, 2, o)
			n1, n2 := ms[0], ms[1]
			tr := n1.Store.(*redisbus.Transport)
			channel := c.MasterOf(redistest.Slot(tr.Channel())).Addr()
			time.Sleep(1200 * time.Millisecond) // past the re-sends asked for at start

			frozen := map[string]bool{}
			freeze := func(addr string) { proxies[addr].Freeze(); frozen[addr] = true }
			thaw := func(addr string) { proxies[addr].Thaw(); delete(frozen, addr) }
			defer func() {
				for addr := range frozen {
					thaw(addr)
				}
			}()
			recordTTL := func(id session.ID) time.Duration {
				ttl, err := rc.PTTL(context.Background(), tr.RecordKey("s:"+hex.EncodeToString(id[:]))).Result()
				if err != nil && !errors.Is(err, redis.Nil) {
					t.Fatal(err)
				}
				return max(ttl, 0)
			}

			// Every shard but the channel's is frozen for n1: S's SET is
			// held unless S's record lies on the channel's shard (one in
			// three), where the SET and the SPUBLISH go in order on one
			// connection; then try another session.
			var id session.ID
			var cl *tlstest.FrozenCache
			for attempt := 0; ; attempt++ {
				if attempt == 10 {
					t.Fatal("ten sessions in a row lie on the channel's shard")
				}
				for addr := range proxies {
					if addr != channel {
						freeze(addr)
					}
				}
				ids := farmtest.HandshakeSessions(n1.Cache)
				cl = &tlstest.FrozenCache{}
				tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, cl))
				id = ids()[0]
				if c.MasterOf(redistest.Slot(tr.RecordKey("s:"+hex.EncodeToString(id[:])))).Addr() != channel {
					break
				}
				for addr := range frozen {
					thaw(addr)
				}
				waitStored(t, n1, id)
			}
			farmtest.Eventually(t, 5*time.Second, "n2 holds S", func() bool { _, ok := lookup(n2.Cache, id); return ok })
			if recordTTL(id) > 0 {
				t.Fatal("S is in the store while n1's write of it is held: the test did not order them")
			}

			if heardAfter {
				freeze(channel) // n1 hears n2's child only after its write returned
			}
			kids := farmtest.HandshakeSessions(n2.Cache)
			if !tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, cl)).DidResume {
				t.Fatal("S did not resume on n2")
			}
			cutAt := time.Now()
			farmtest.Eventually(t, 5*time.Second, "n2 stored S's child", func() bool {
				return len(kids()) > 0 && recordTTL(kids()[0]) > 0
			})
			if !heardAfter {
				farmtest.Eventually(t, 5*time.Second, "n1 cut its copy of S", func() bool {
					r, ok := lookup(n1.Cache, id)
					return ok && time.Until(r.Expires) <= grace
				})
			}

			for addr := range frozen {
				if addr != channel {
					thaw(addr)
				}
			}
			farmtest.Eventually(t, 5*time.Second, "n1 wrote S to the store", func() bool { return recordTTL(id) > 0 })
			if heardAfter {
				time.Sleep(100 * time.Millisecond) // n1's write returned
				thaw(channel)
				farmtest.Eventually(t, 5*time.Second, "n1 cut its copy of S", func() bool {
					r, ok := lookup(n1.Cache, id)
					return ok && time.Until(r.Expires) <= grace
				})
			}

			time.Sleep(time.Until(cutAt.Add(grace + 300*time.Millisecond)))
			if ttl := recordTTL(id); ttl > grace {
				t.Errorf("the store keeps S whole (%v) past its grace", ttl.Round(time.Second))
			}
			if tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, cl)).DidResume {
				t.Error("n2 resumed S past its grace cut, from the record n1 wrote whole")
			}
			n3 := farmtest.Join(t, "n3", farmName, *o)
			farmtest.WaitConnected(t, n3)
			if tlstest.MustDial(t, n3.Server.Addr, farmtest.Client(tls.VersionTLS13, cl)).DidResume {
				t.Error("n3 resumed S past its grace cut, from the record n1 wrote whole")
			}
		})
	}
}
