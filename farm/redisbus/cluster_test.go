package redisbus_test

import (
	"crypto/tls"
	"slices"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// patient gives the nodes of a failover test lookup and write-through
// deadlines that a loaded CI machine running -race does not miss: what
// these tests bound is the failover, not the deadlines.
func patient(cfg *farm.Config) {
	cfg.LookupTimeout = 500 * time.Millisecond
	cfg.WriteThroughTimeout = time.Second
}

// transportAt opens each member's transport on the Redis at url.
func transportAt(url string) func(testing.TB, string) (transport.Bus, transport.Store) {
	return func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
		tr, err := redisbus.Open(url, farmName)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		return tr, tr
	}
}

// TestClusterSpreadsSessionsAndFollowsFailover runs three store-only,
// write-through nodes on a Redis Cluster of three masters and three
// replicas: clients resume across nodes, the sessions spread over every
// master, and after kill -9 of the master with the most sessions,
// cross-node resumption comes back without a restart within
// 2 × cluster-node-timeout + a few seconds.
func TestClusterSpreadsSessionsAndFollowsFailover(t *testing.T) {
	c := redistest.StartCluster(t, 3, 1, 2*time.Second)
	ms, _ := farmtest.Start(t, 3, &farmtest.Options{
		NewTransport: transportAt(c.URL("reload=2s")), Mode: farm.StoreOnly, WriteThrough: true, Tweak: patient,
		// Each resumption cuts its parent's record to the grace: with the
		// default 30 s, a roam that took longer (a loaded machine) left
		// only the sessions of its last 30 s to count below. 10 minutes
		// outlasts the test; the cuts are still written.
		TweakCache: func(c *session.Config) { c.ResumeGrace = 10 * time.Minute },
	})
	ccfg := farmtest.Client(tls.VersionTLS13, &tlstest.SharedCache{})
	const attempts = 2000
	failed, elsewhere := farmtest.Roam(t, ms, attempts, func(m *farmtest.Member) tls.ConnectionState {
		return tlstest.MustDial(t, m.Server.Addr, ccfg)
	})
	if failed > attempts/1000 {
		farmtest.LogStats(t, ms)
		t.Fatalf("%d of %d resumptions failed, want at most %d", failed, attempts, attempts/1000)
	}
	if elsewhere < attempts/3 {
		t.Fatalf("only %d of %d resumptions crossed nodes", elsewhere, attempts)
	}

	pattern := ms[0].Bus.(*redisbus.Transport).RecordKey("s:*")
	masters := c.Masters()
	if len(masters) != 3 {
		t.Fatalf("%d masters, want 3", len(masters))
	}
	counts := make([]int, len(masters))
	total := 0
	for i, m := range masters {
		counts[i] = c.CountKeys(m, pattern)
		total += counts[i]
	}
	t.Logf("session keys per master: %v (of %d)", counts, total)
	if total < attempts/2 {
		t.Fatalf("%d session keys in the cluster after %d connections", total, attempts)
	}
	for i, n := range counts {
		if n*5 < total {
			t.Errorf("master %s holds %d of %d session keys, want at least 20%%", masters[i].Addr(), n, total)
		}
	}

	// Broadcast on the cluster: the batch of SETs (over several masters) and
	// the SPUBLISH go out as one cluster pipeline (transport.Batcher).
	bs, _ := farmtest.Start(t, 2, &farmtest.Options{NewTransport: transportAt(c.URL("")), WriteThrough: true})
	tlstest.MustDial(t, bs[0].Server.Addr, farmtest.Client(tls.VersionTLS13, tls.NewLRUClientSessionCache(1)))
	farmtest.Eventually(t, 5*time.Second, "a session broadcast over the cluster", func() bool {
		return farmtest.Counter(bs[1].Node.Metrics(), "tlsfarm_farm_inserted_total") > 0
	})

	biggest := masters[slices.Index(counts, slices.Max(counts))]
	farmtest.Recovery(t, ms, tls.VersionTLS13, 100, 12*time.Second, biggest.Kill)
	farmtest.NoHandshakeErrors(t, ms)
	farmtest.WaitConnected(t, ms...) // the bus too, wherever its slot was
}

// TestSentinelFollowsMasterSwitch: three store-only, write-through nodes on
// a master and a replica watched by three sentinels; after kill -9 of the
// master, cross-node resumption comes back without a restart.
func TestSentinelFollowsMasterSwitch(t *testing.T) {
	t.Parallel()
	st := redistest.StartSentinel(t, 1, 3, time.Second)
	ms, _ := farmtest.Start(t, 3, &farmtest.Options{
		NewTransport: transportAt(st.URL()), Mode: farm.StoreOnly, WriteThrough: true, Tweak: patient,
	})
	farmtest.Recovery(t, ms, tls.VersionTLS13, 50, 5*time.Second, func() {}) // sharing works before the failure
	old := st.MasterAddr()
	farmtest.Recovery(t, ms, tls.VersionTLS13, 100, 15*time.Second, st.Master.Kill)
	if now := st.MasterAddr(); now == old {
		t.Errorf("the sentinels still name %s the master", old)
	}
	farmtest.NoHandshakeErrors(t, ms)
}

// TestGetRecordsCluster: on a Redis Cluster, where each record has a slot
// of its own, GetRecords reads records spread over every master (pipelined
// GETs, not a cross-slot MGET).
func TestGetRecordsCluster(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t, 3, 0, 2*time.Second)
	tr, err := redisbus.Open(c.URL(""), farmtest.FarmName(t))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	farmtest.CheckGetRecords(t, tr, tr)
}
