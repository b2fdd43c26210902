package redisbus_test

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestClusterFailoverElsewhereResends: on a Redis Cluster of three masters
// with a replica each, a farm of two store-only, write-through nodes of
// single-use caches subscribes on the master of its channel's slot
// ("home"). n1 issues a session whose record lives on another master
// ("other"), and the record reaches other's replica. Then the replica is
// paused and other drops its replication link (CLIENT KILL TYPE replica),
// a client resumes the session on n1 (n1 takes the record and retires the
// session: a take and a DEL on other, which the replica never gets), and
// other is killed (kill -9) before the replica is resumed. The cluster
// promotes the replica, holding the consumed session's record, while
// every node's subscription on home stays up.
//
// The nodes must take the failover for a bus gap and re-send their kept
// retirements: the record goes from the promoted replica, and the session
// resumes nowhere, on n1, n2 or a node that joins afterwards. Without the
// watch of the other shards no node re-sent anything, the record stayed,
// and the node that joined resumed the session a second time.
//
// Before the failover, five quiet seconds must not resubscribe anyone:
// the watch asks every second, and must see no failover that did not
// happen.
func TestClusterFailoverElsewhereResends(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := redistest.StartCluster(t, 3, 1, 2*time.Second)
	o := &farmtest.Options{NewTransport: transportAt(c.URL("reload=1s")), Mode: farm.StoreOnly, WriteThrough: true, Tweak: patient,
		TweakCache: func(c *session.Config) { c.SingleUse = true }}
	ms, name := farmtest.Start(t, 2, o)
	n1, n2 := ms[0], ms[1]
	tr := n1.Bus.(*redisbus.Transport)

	home := c.MasterOf(redistest.Slot(tr.Channel()))
	var other *redistest.Server
	for _, m := range c.Masters() {
		if m != home {
			other = m
			break
		}
	}
	if home == nil || other == nil {
		t.Fatalf("no master of the channel's slot, or no other master: %s", c.NodesText())
	}
	replicas := c.ReplicasOf(other)
	if len(replicas) != 1 {
		t.Fatalf("%d replicas of %s, want 1: %s", len(replicas), other.Addr(), c.NodesText())
	}
	replica := replicas[0]

	// A session whose record lives on other (a third of them do).
	var key string
	var cs *tlstest.FrozenCache
	for range 50 {
		ids, css := farmtest.Issue(t, n1, 1)
		if k := tr.RecordKey("s:" + hex.EncodeToString(ids[0][:])); c.MasterOf(redistest.Slot(k)) == other {
			key, cs = k, css[0]
			break
		}
	}
	if key == "" {
		t.Fatal("no session of 50 had its record on the chosen master")
	}
	farmtest.Eventually(t, 10*time.Second, "the session's record on other's replica", func() bool {
		return c.CountKeys(replica, key) == 1
	})

	connects := func(m *farmtest.Member) uint64 {
		return farmtest.Counter(m.Node.Metrics(), "tlsfarm_farm_connects_total")
	}
	resent := func(m *farmtest.Member) uint64 {
		return farmtest.Counter(m.Node.Metrics(), "tlsfarm_farm_lifecycle_resend_total", "event", "resent")
	}
	c1, c2 := connects(n1), connects(n2)
	time.Sleep(5 * time.Second)
	if a1, a2 := connects(n1), connects(n2); a1 != c1 || a2 != c2 {
		t.Fatalf("with no failover, the nodes subscribed anew: connects n1 %d→%d, n2 %d→%d", c1, a1, c2, a2)
	}
	r1 := resent(n1)

	// Hold the next writes on other back from its replica: a paused
	// replica cannot reconnect to take them from the backlog.
	replica.Pause()
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			replica.Resume()
		}
	})
	if err := c.Client(other).Do(ctx, "client", "kill", "type", "replica").Err(); err != nil {
		t.Fatalf("CLIENT KILL TYPE replica on %s: %v", other.Addr(), err)
	}
	if !tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, cs)).DidResume {
		t.Fatal("the session did not resume on n1")
	}
	farmtest.Eventually(t, 5*time.Second, "n1 sent its retirement", func() bool {
		return farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_lifecycle_total", "event", "retire_sent") > 0
	})
	if n, err := c.Client(other).Exists(ctx, key).Result(); err != nil || n != 0 {
		t.Fatalf("the consumed session's record on other: %d, %v; want gone", n, err)
	}
	killed := time.Now()
	other.Kill()
	replica.Resume()
	resumed = true

	// The promotion takes 3–6 s on a quiet machine, longer on a loaded one.
	farmtest.Eventually(t, 90*time.Second, "the cluster promoted other's replica", func() bool {
		return c.MasterOf(redistest.Slot(key)) == replica
	})
	promoted := time.Now()
	promotedReplica := c.Client(replica)
	deadline := promoted.Add(30 * time.Second)
	for {
		n, err := promotedReplica.Exists(ctx, key).Result()
		if err == nil && n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the consumed session's record still on the promoted replica 30s after the promotion (%v after the kill; EXISTS %d, %v); "+
				"n1: connects %d (before %d), resent %d (before %d); n2: connects %d (before %d); %s",
				promoted.Sub(killed).Round(time.Millisecond), n, err,
				connects(n1), c1, resent(n1), r1, connects(n2), c2, c.NodesText())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("promoted %v after the kill, record deleted again %v after the promotion",
		promoted.Sub(killed).Round(time.Millisecond), time.Since(promoted).Round(time.Millisecond))
	if got := resent(n1); got <= r1 {
		t.Errorf("n1 re-sent nothing (%d before the failover, %d after)", r1, got)
	}
	// Each node sees the failover at its own next ask, a second apart at
	// most on a quiet machine.
	deadline = time.Now().Add(15 * time.Second)
	for connects(n1) <= c1 || connects(n2) <= c2 {
		if time.Now().After(deadline) {
			t.Fatalf("not every node subscribed anew within 15s of the record's delete: connects n1 %d (before %d), n2 %d (before %d); %s",
				connects(n1), c1, connects(n2), c2, c.NodesText())
		}
		time.Sleep(50 * time.Millisecond)
	}

	farmtest.WaitConnected(t, n1, n2)
	n3 := farmtest.Join(t, "n3", name, *o)
	farmtest.WaitConnected(t, n3)
	for _, m := range []*farmtest.Member{n1, n2, n3} {
		if tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, cs)).DidResume {
			t.Errorf("the consumed session resumed on %s after the failover", m.Name)
		}
	}
}

// TestClusterWatchStopsWithSubscription: a subscription on a cluster
// watches the other shards while it lives (a goroutine in watchShards),
// takes the death of a replica, which fails nothing over, for no reason to
// subscribe anew, and leaves no goroutine of the watch behind once it
// ends.
func TestClusterWatchStopsWithSubscription(t *testing.T) {
	c := redistest.StartCluster(t, 3, 1, time.Second)
	tr, err := redisbus.Open(c.URL(""), farmtest.FarmName(t))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	var ups atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		tr.Subscribe(ctx, func([]byte) {}, func(up bool, _ error) {
			if up {
				ups.Add(1)
			}
		})
	}()
	farmtest.Eventually(t, 10*time.Second, "the subscription up", func() bool { return ups.Load() > 0 })
	if n := watchGoroutines(); n == 0 {
		t.Fatal("no goroutine watches the cluster's shards while subscribed")
	}

	var replica *redistest.Server
	for _, m := range c.Masters() {
		if rs := c.ReplicasOf(m); len(rs) > 0 {
			replica = rs[0]
			break
		}
	}
	if replica == nil {
		t.Fatalf("no replica: %s", c.NodesText())
	}
	replica.Kill()
	// The other nodes mark it failed after the node timeout (1 s); the
	// watch asks every second.
	farmtest.Eventually(t, 30*time.Second, "the dead replica marked failed", func() bool {
		for _, n := range strings.Split(c.NodesText(), "\n") {
			if strings.Contains(n, replica.Addr()) && strings.Contains(n, "fail") && !strings.Contains(n, "fail?") {
				return true
			}
		}
		return false
	})
	time.Sleep(3 * time.Second)
	if n := ups.Load(); n != 1 {
		t.Errorf("the subscription came up %d times with no failover, want 1", n)
	}

	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Subscribe did not return within 10s of its context's end")
	}
	// An ask abandoned at the end ends by its deadline, a second.
	farmtest.Eventually(t, 5*time.Second, "no goroutine of the watch left", func() bool { return watchGoroutines() == 0 })
}

// watchGoroutines counts the goroutines in redisbus's watch of a
// cluster's shards.
func watchGoroutines() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "redisbus.(*Transport).watchShards") || strings.Contains(g, "redisbus.(*Transport).slotHolders") {
			n++
		}
	}
	return n
}
