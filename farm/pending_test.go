package farm_test

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
)

// busOnly opens a Redis transport as a bus without a store: whatever the
// nodes resume, they resume from what the bus brought them.
func busOnly(url string) func(testing.TB, string) (transport.Bus, transport.Store) {
	return func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
		tr, err := redisbus.Open(url, farmName)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		return tr, nil
	}
}

// TestLazyPeersResumeWhatTheyKept: with LazyPeers, a peer's session is kept
// as it arrived, out of the cache, until a client presents it; then it
// resumes, without a store. A session resumed elsewhere replaces its parent
// in what peers keep, and a kept session can be revoked.
func TestLazyPeersResumeWhatTheyKept(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	ms, _ := farmtest.Start(t, 3, &farmtest.Options{NewTransport: busOnly(url), Tweak: func(c *farm.Config) { c.LazyPeers = true; roomyWriteThrough(c) }})
	ids := farmtest.NewSessions(ms[0].Cache)
	frozen := &tlstest.FrozenCache{}
	tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tls.VersionTLS13, frozen))
	id := ids()[0]
	for _, m := range ms[1:] {
		farmtest.Eventually(t, 5*time.Second, m.Name+" kept the session", func() bool { return int(farmtest.Counter(m.Node.Metrics(), "tlsfarm_farm_lazy_sessions")) == 1 })
		if _, ok := lookup(m.Cache, id); ok {
			t.Fatalf("%s decoded a peer's session nobody presented", m.Name)
		}
	}

	if !tlstest.MustDial(t, ms[1].Server.Addr, farmtest.Client(tls.VersionTLS13, frozen)).DidResume {
		farmtest.LogStats(t, ms)
		t.Fatal("n2 did not resume the session it kept")
	}
	st := ms[1].Node.Metrics()
	taken := farmtest.Counter(st, "tlsfarm_farm_lazy_total", "event", "taken")
	pending := int(farmtest.Counter(st, "tlsfarm_farm_lazy_sessions"))
	lookups := farmtest.Counter(st, "tlsfarm_farm_lookups_total")
	if taken != 1 || pending != 0 || lookups != 0 {
		t.Fatalf("n2: taken %d, pending %d, store lookups %d; want 1, 0, 0", taken, pending, lookups)
	}
	if _, ok := lookup(ms[1].Cache, id); !ok {
		t.Fatal("n2 did not insert the session it resumed")
	}

	// n2's resumption issued a child of id: n3 keeps the child instead.
	farmtest.Eventually(t, 5*time.Second, "n3 kept the child", func() bool {
		return farmtest.Counter(ms[2].Node.Metrics(), "tlsfarm_farm_lazy_total", "event", "kept") == 2
	})
	if st := ms[2].Node.Metrics(); int(farmtest.Counter(st, "tlsfarm_farm_lazy_sessions")) != 1 {
		t.Fatalf("n3 keeps %d sessions, want 1: the child replaces its parent", int(farmtest.Counter(st, "tlsfarm_farm_lazy_sessions")))
	}

	// n3 holds the child only as kept: revoking it there still works, and
	// reaches everyone.
	child := &tlstest.FrozenCache{}
	tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tls.VersionTLS13, child))
	newest := ids()[len(ids())-1]
	farmtest.Eventually(t, 5*time.Second, "n3 kept the newest session", func() bool {
		return farmtest.Counter(ms[2].Node.Metrics(), "tlsfarm_farm_lazy_total", "event", "kept") == 3
	})
	ok, err := ms[2].Node.Revoke(context.Background(), newest)
	if err != nil || !ok {
		t.Fatalf("Revoke of a kept session = %t, %v", ok, err)
	}
	for _, m := range ms[:2] {
		farmtest.Eventually(t, 5*time.Second, m.Name+" received the revocation", func() bool {
			return farmtest.Counter(m.Node.Metrics(), "tlsfarm_farm_received_total", "kind", "revocation") > 0
		})
	}
	for _, m := range ms {
		if tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, child)).DidResume {
			t.Fatalf("revoked session resumed on %s", m.Name)
		}
	}
}

// TestLazyPeersRoam: a client reconnecting at once to random nodes of a
// write-through farm with LazyPeers resumes as without it.
func TestLazyPeersRoam(t *testing.T) {
	url := redistest.URL(t)
	for _, tv := range versions {
		t.Run(tv.name, func(t *testing.T) {
			ms, _ := farmtest.Start(t, 3, &farmtest.Options{NewTransport: redisTransport(url), WriteThrough: true,
				Tweak: func(c *farm.Config) { c.LazyPeers = true; roomyWriteThrough(c) }})
			ccfg := farmtest.Client(tv.v, &tlstest.SharedCache{})
			failed, elsewhere := farmtest.Roam(t, ms, 300, func(m *farmtest.Member) tls.ConnectionState {
				return tlstest.MustDial(t, m.Server.Addr, ccfg)
			})
			if failed > 2 || elsewhere < 100 {
				farmtest.LogStats(t, ms)
				t.Fatalf("%d failed, %d elsewhere", failed, elsewhere)
			}
			var taken uint64
			for _, m := range ms {
				taken += farmtest.Counter(m.Node.Metrics(), "tlsfarm_farm_lazy_total", "event", "taken")
			}
			if taken == 0 {
				t.Fatal("no kept session was ever taken: the lazy path did not serve")
			}
			farmtest.NoHandshakeErrors(t, ms)
		})
	}
}
