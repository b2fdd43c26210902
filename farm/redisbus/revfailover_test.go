package redisbus_test

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
)

// TestRevocationThroughSentinelFailover: with wait_replicas=1, n1 revokes
// a session while the replica's replication link is frozen, so that the
// master has the tombstone (and the record's delete) and the replica has
// neither; then the master is killed and the sentinel promotes the
// replica. n1 stays up through the failover.
//
// A revocation is a promise of the farm like single use: a node that
// joins after the failover must not resume the revoked session. The
// tombstone's write must therefore count only once a replica has it, so
// that n1 keeps the revocation pending and writes it again to the
// promoted master. Before, SetAdd waited for no replica: the revocation
// counted as applied, nothing wrote the tombstone again, and the promoted
// master neither held it nor knew the record was deleted.
func TestRevocationThroughSentinelFailover(t *testing.T) {
	t.Parallel()
	f := startFailoverFarmCache(t, "&wait_replicas=1&wait_timeout=200ms", nil)
	ids, cs := farmtest.Issue(t, f.n1, 1)
	tr := f.n1.Bus.(*redisbus.Transport)
	key := tr.RecordKey("s:" + hex.EncodeToString(ids[0][:]))
	farmtest.Eventually(t, 5*time.Second, "the session's record on the replica", func() bool {
		return f.onReplica(t, key)
	})

	f.link.Freeze()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	st, err := f.n1.Node.RevokeSession(ctx, ids[0])
	cancel()
	t.Logf("revocation on n1 with the replica's link frozen: %v, %v", st, err)
	if st == farm.RevokeNotFound {
		t.Fatal("n1 did not find the session to revoke")
	}
	if st == farm.RevokeApplied {
		t.Error("the revocation counts as applied though no replica has its tombstone")
	}
	f.failOver(t)

	tombs := func() int64 {
		n, err := f.replica.ZCard(context.Background(), tr.Key("revoked")).Result()
		if err != nil {
			t.Fatalf("ZCARD on the promoted replica: %v", err)
		}
		return n
	}
	// n1 writes a pending revocation again with backoff (it stays
	// pending while the promoted master has no replica to acknowledge it).
	for deadline := time.Now().Add(20 * time.Second); tombs() == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Error("no tombstone on the promoted replica 20s after the failover")
			break
		}
	}
	t.Logf("record on the promoted replica: %v", f.onReplica(t, key))
	n2 := farmtest.Join(t, "n2", f.name, *f.o)
	farmtest.WaitConnected(t, n2)
	if tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, cs[0])).DidResume {
		t.Error("the revoked session resumed on n2, which joined after the failover")
	}

	// Once the old master is back as a replica of the promoted one, the
	// revocation's next write is acknowledged, and it is pending no more.
	f.st.Master.Restart()
	back := redis.NewClient(&redis.Options{Addr: f.st.Master.Addr(), MaxRetries: -1})
	defer back.Close()
	if err := back.Do(context.Background(), "replicaof", "127.0.0.1", f.st.Replicas[0].Port).Err(); err != nil {
		t.Fatal(err)
	}
	farmtest.Eventually(t, 60*time.Second, "n1's revocation applied once a replica is back", func() bool {
		return farmtest.Counter(f.n1.Node.Metrics(), "tlsfarm_farm_pending_revocations") == 0
	})
}

// TestRevocationsWrittenBackWithoutReplica: with wait_replicas=1, the
// master loses its data (FLUSHALL) while its replica acknowledges nothing
// (its link frozen). n1 sees the loss and writes back the revocations it
// remembers: every one must reach the master, though no replica
// acknowledges them. Before, the first tombstone's ErrNotReplicated ended
// the write-back of revocations: one of three reached the store, and a
// node joining later would not know the other two.
func TestRevocationsWrittenBackWithoutReplica(t *testing.T) {
	f := &failoverFarm{}
	f.st = redistest.StartSentinelVia(t, 1, 1, time.Minute, func(master string) string {
		f.link = nettest.NewProxy(t, master)
		return f.link.Addr
	})
	f.o = &farmtest.Options{
		NewTransport: transportAt(f.st.URL() + "&wait_replicas=1&wait_timeout=100ms"), Mode: farm.StoreOnly, WriteThrough: true,
		Tweak: func(cfg *farm.Config) {
			patient(cfg)
			cfg.HealInterval = 300 * time.Millisecond
		},
	}
	ms, _ := farmtest.Start(t, 1, f.o)
	n1 := ms[0]
	ids, _ := farmtest.Issue(t, n1, 3)
	for _, id := range ids {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := n1.Node.RevokeSession(ctx, id)
		cancel()
		if st != farm.RevokeApplied {
			t.Fatalf("revocation with the replica up: %v, %v; want applied", st, err)
		}
	}
	tr := n1.Bus.(*redisbus.Transport)
	master := redis.NewClient(&redis.Options{Addr: f.st.Master.Addr(), MaxRetries: -1})
	defer master.Close()
	ctx := context.Background()
	// At least one tombstone a revocation: one whose WAIT outlasted its
	// 100 ms under load was written again, as a member of its own.
	if n, err := master.ZCard(ctx, tr.Key("revoked")).Result(); err != nil || n < 3 {
		t.Fatalf("tombstones on the master: %d, %v; want at least 3", n, err)
	}
	written := func() uint64 {
		return farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_written_back_total")
	}
	f.link.Freeze()
	if err := master.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	// The loss is seen at a heal after the generation record is written
	// again (its write, unacknowledged, is an error the first time).
	deadline := time.Now().Add(20 * time.Second)
	for {
		n, err := master.ZCard(ctx, tr.Key("revoked")).Result()
		if err == nil && n >= 3 {
			t.Logf("%d tombstones written back", n)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d tombstones on the master 20s after it lost its data (want 3; %v; sessions written back %d)", n, err, written())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
