package farm_test

import (
	"crypto/tls"
	"encoding/hex"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// storedTTL returns the TTL left to the session record id in the Redis
// that m's store uses, and whether it is there.
func storedTTL(t *testing.T, c *redis.Client, m *farmtest.Member, id session.ID) (time.Duration, bool) {
	t.Helper()
	key := m.Store.(*redisbus.Transport).RecordKey("s:" + hex.EncodeToString(id[:]))
	n, err := c.Exists(t.Context(), key).Result()
	if err != nil || n == 0 {
		return 0, false
	}
	ttl, err := c.PTTL(t.Context(), key).Result()
	if err != nil {
		t.Fatal(err)
	}
	return ttl, true
}

// lifecyclePaths are the ways a node writes retirements and cuts to the
// farm, for the tests that break them: Redis as bus and store (one path,
// in both modes), and a NATS bus with a Redis store (the store's own path).
var lifecyclePaths = []struct {
	name string
	mode farm.Mode
	nats bool
}{
	{"redis/broadcast", farm.Broadcast, false},
	{"redis/store-only", farm.StoreOnly, false},
	{"nats+redis/store-only", farm.StoreOnly, true},
}

// TestLifecycleSurvivesStoreOutage retires a session and resumes another
// (a grace cut of its parent) on n1 while the store is down (killed; its
// append-only file keeps its data, as a restarted Redis with persistence
// would). Once the store returns, it no longer holds the retired session
// and holds the parent only for its grace; a node that joins afterwards,
// with an empty cache, resumes neither (past the grace), nor does n2. With
// Redis as bus and store (one path), and with a NATS bus and a Redis store
// (the store's own path).
func TestLifecycleSurvivesStoreOutage(t *testing.T) {
	t.Parallel()
	const grace = 4 * time.Second
	for _, tc := range lifecyclePaths {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := redistest.StartWith(t, "--appendonly", "yes", "--appendfsync", "always")
			newTransport := redisTransport(srv.URL())
			if tc.nats {
				newTransport = natsBusRedisStore(farmtest.ServerURL(t, "NATS", "TLSFARM_NATS_URL", "nats://127.0.0.1:4222"), srv.URL())
			}
			o := &farmtest.Options{NewTransport: newTransport, Mode: tc.mode, WriteThrough: true,
				TweakCache: func(c *session.Config) { c.ResumeGrace = grace },
				Tweak: func(c *farm.Config) {
					c.OpTimeout = 300 * time.Millisecond
					c.BreakerCooldown = 500 * time.Millisecond
				}}
			ms, name := farmtest.Start(t, 2, o)
			rc := redis.NewClient(&redis.Options{Addr: srv.Addr()})
			defer rc.Close()

			ids, cs := farmtest.Issue(t, ms[0], 2)
			retired, parent, retiredC, parentC := ids[0], ids[1], cs[0], cs[1]
			waitStored(t, ms[0], retired)
			waitStored(t, ms[0], parent)

			srv.Kill()
			if !ms[0].Cache.Retire(retired, session.OriginAPI) {
				t.Fatal("n1 did not hold the session to retire")
			}
			if !tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tls.VersionTLS13, parentC)).DidResume {
				t.Fatal("the parent did not resume on n1 from its own cache")
			}
			cutBy := time.Now().Add(grace)
			farmtest.Eventually(t, 5*time.Second, "the retirement and the cut kept for later", func() bool {
				return farmtest.Counter(ms[0].Node.Metrics(), "tlsfarm_farm_lifecycle_backlog_length") == 2
			})
			srv.Restart()
			back := time.Now()
			farmtest.Eventually(t, 10*time.Second, "the store lost the retired session and holds the parent for its grace only", func() bool {
				if _, ok := storedTTL(t, rc, ms[0], retired); ok {
					return false
				}
				ttl, ok := storedTTL(t, rc, ms[0], parent)
				if !ok {
					return time.Now().After(cutBy) // expired with its cut
				}
				return ttl > 0 && ttl <= grace
			})
			t.Logf("retirement and cut in the store %v after it returned", time.Since(back))
			farmtest.Eventually(t, 5*time.Second, "the lifecycle backlog emptied", func() bool {
				return farmtest.Counter(ms[0].Node.Metrics(), "tlsfarm_farm_lifecycle_backlog_length") == 0
			})
			if d := farmtest.Counter(ms[0].Node.Metrics(), "tlsfarm_farm_lifecycle_backlog_dropped_total"); d != 0 {
				t.Fatalf("%d retirements or cuts dropped", d)
			}
			farmtest.Eventually(t, grace+5*time.Second, "the parent's grace is over in the store", func() bool {
				_, ok := storedTTL(t, rc, ms[0], parent)
				return !ok
			})

			fresh := farmtest.Join(t, "n3", name, *o)
			farmtest.WaitConnected(t, fresh)
			peers := []*farmtest.Member{fresh}
			if tc.mode == farm.StoreOnly {
				// In store-only mode n2 holds no copy: like n3, it
				// can only load them from the store. (A broadcast peer
				// that was cut off too may miss the replayed messages:
				// see TestLifecycleSurvivesBusOutage for the bus.)
				peers = append(peers, ms[1])
			}
			for _, m := range peers {
				for what, c := range map[string]*tlstest.FrozenCache{"retired": retiredC, "cut": parentC} {
					if tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
						farmtest.LogStats(t, append(ms, fresh))
						t.Fatalf("the %s session resumed on %s after the store returned", what, m.Name)
					}
				}
			}
		})
	}
}

// TestLifecycleSurvivesBusOutage: with a bus of its own (NATS) that fails
// on n1 while its store works, a retirement made on n1 meanwhile reaches
// n2 once the bus works again, and n2 drops its copy of the session.
func TestLifecycleSurvivesBusOutage(t *testing.T) {
	t.Parallel()
	natsURL := farmtest.ServerURL(t, "NATS", "TLSFARM_NATS_URL", "nats://127.0.0.1:4222")
	url := redistest.URL(t)
	var first atomic.Pointer[downBus]
	ms, _ := farmtest.Start(t, 2, &farmtest.Options{Mode: farm.Broadcast, WriteThrough: true,
		NewTransport: func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
			bus, store := natsBusRedisStore(natsURL, url)(t, farmName)
			d := &downBus{Bus: bus}
			first.CompareAndSwap(nil, d) // n1's
			return d, store
		},
		Tweak: func(c *farm.Config) { c.OpTimeout = 300 * time.Millisecond }})
	id, frozen := issueHeld(t, ms)
	bus := first.Load()
	bus.down.Store(true)
	ms[0].Cache.Retire(id, session.OriginAPI)
	farmtest.Eventually(t, 5*time.Second, "the retirement kept for the bus", func() bool {
		return farmtest.Counter(ms[0].Node.Metrics(), "tlsfarm_farm_lifecycle_backlog_length") == 1
	})
	if _, ok := lookup(ms[1].Cache, id); !ok {
		t.Fatal("n2 dropped the session while n1's bus was down")
	}
	bus.down.Store(false)
	farmtest.Eventually(t, 5*time.Second, "n2 dropped its copy once the bus works", func() bool {
		_, ok := lookup(ms[1].Cache, id)
		return !ok
	})
	if tlstest.MustDial(t, ms[1].Server.Addr, farmtest.Client(tls.VersionTLS13, frozen)).DidResume {
		t.Fatal("n2 resumed a session retired on n1")
	}
}
