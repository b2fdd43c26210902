package redisbus_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// BenchmarkConsume measures the farm's exactly-once operations on a
// Sentinel deployment (a master and one replica on loopback): take, a
// takeScript (GETDEL and the retirement mark: the take of a single-use
// session), and add, a SET NX (a strike
// of 0-RTT anti-replay), without wait_replicas and with wait_replicas=1
// (a WAIT in the same pipeline, which returns once the replica has
// acknowledged).
func BenchmarkConsume(b *testing.B) {
	st := redistest.StartSentinel(b, 1, 1, 5*time.Second)
	for _, query := range []string{"", "&wait_replicas=1&wait_timeout=1s"} {
		name := "wait_replicas=0"
		if query != "" {
			name = "wait_replicas=1"
		}
		tr, err := redisbus.Open(st.URL()+query, farmtest.FarmName(b))
		if err != nil {
			b.Fatal(err)
		}
		defer tr.Close()
		ctx := context.Background()
		value := make([]byte, 200) // about a sealed session record
		b.Run(name+"/take", func(b *testing.B) {
			items := make([]transport.Item, b.N)
			for i := range items {
				items[i] = transport.Item{Key: fmt.Sprintf("bench:%d:%d", b.N, i), Value: value, TTL: time.Minute}
			}
			for i := 0; i < len(items); i += 1000 {
				if err := tr.PutRecords(ctx, items[i:min(i+1000, len(items))]...); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range items {
				if _, err := tr.TakeRecord(ctx, items[i].Key); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/add", func(b *testing.B) {
			run := time.Now().UnixNano()
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				ok, err := tr.AddRecord(ctx, transport.Item{Key: fmt.Sprintf("once:%d:%d", run, i), Value: []byte{1}, TTL: time.Minute})
				if err != nil || !ok {
					b.Fatal(ok, err)
				}
			}
		})
	}
}

// TestWaitReplicasStore runs the store conformance suite on transports
// with wait_replicas=1, on a Sentinel deployment and on a Redis Cluster
// with a replica per master, and checks that a take and an add with
// wait_replicas above the replicas there are, and a SetAdd, fail with
// ErrNotReplicated.
// On the cluster, with one replica paused (SIGSTOP), the adds of keys its
// master holds fail and the others succeed: WAIT goes to the master of
// the key's slot (go-redis sends a command without a key to any master,
// which would count its own replicas).
func TestWaitReplicasStore(t *testing.T) {
	t.Parallel()
	st := redistest.StartSentinel(t, 1, 1, 5*time.Second)
	c := redistest.StartCluster(t, 3, 1, 2*time.Second)
	for name, url := range map[string]string{
		"sentinel": st.URL() + "&wait_replicas=1&wait_timeout=1s",
		"cluster":  c.URL("wait_replicas=1&wait_timeout=1s"),
	} {
		t.Run(name, func(t *testing.T) {
			farmtest.TestStore(t, func(t *testing.T, farmName string) transport.Store {
				tr, err := redisbus.Open(url, farmName)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { tr.Close() })
				return tr
			})
			tr, err := redisbus.Open(url, farmtest.FarmName(t))
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			tr.WaitReplicas, tr.WaitTimeout = 2, 20*time.Millisecond
			ctx := context.Background()
			for i := range 20 { // keys over several slots, on a cluster
				k := fmt.Sprintf("over:%d", i)
				if ok, err := tr.AddRecord(ctx, transport.Item{Key: k, Value: []byte{1}, TTL: time.Minute}); ok || !errors.Is(err, redisbus.ErrNotReplicated) {
					t.Fatalf("AddRecord with more replicas wanted than there are = %v, %v; want false, ErrNotReplicated", ok, err)
				}
				if v, err := tr.TakeRecord(ctx, k); v != nil || !errors.Is(err, redisbus.ErrNotReplicated) {
					t.Fatalf("TakeRecord with more replicas wanted than there are = %v, %v; want nil, ErrNotReplicated", v != nil, err)
				}
			}
			// A revocation's tombstone is a promise too.
			if err := tr.SetAdd(ctx, "revoked", []byte("t"), time.Now().Add(time.Minute)); !errors.Is(err, redisbus.ErrNotReplicated) {
				t.Fatalf("SetAdd with more replicas wanted than there are = %v; want ErrNotReplicated", err)
			}
			if name == "cluster" {
				pausedReplica(t, c, tr)
			}
		})
	}
}

// pausedReplica pauses a replica of cluster c and adds keys with
// wait_replicas=1 through tr: those its master holds must fail with
// ErrNotReplicated, the others succeed.
func pausedReplica(t *testing.T, c *redistest.Cluster, tr *redisbus.Transport) {
	ctx := context.Background()
	masters := c.Masters()
	var replica, master *redistest.Server
	for _, s := range c.Nodes {
		if slices.Contains(masters, s) {
			continue
		}
		info, err := c.Client(s).Info(ctx, "replication").Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range masters {
			if strings.Contains(info, fmt.Sprintf("master_port:%d\r", m.Port)) {
				replica, master = s, m
			}
		}
		if master != nil {
			break
		}
	}
	if master == nil {
		t.Fatal("found no replica and its master")
	}
	mc := c.Client(master)
	// Long enough for the other masters' replicas to acknowledge on a
	// loaded machine (20 ms failed there); each key on the paused
	// replica's master waits it out.
	tr.WaitReplicas, tr.WaitTimeout = 1, 300*time.Millisecond
	replica.Pause()
	defer replica.Resume()
	held, other := 0, 0
	for i := range 30 {
		k := fmt.Sprintf("paused:%d", i)
		ok, err := tr.AddRecord(ctx, transport.Item{Key: k, Value: []byte{1}, TTL: time.Minute})
		// EXISTS on the master: 1 for its key, MOVED for another's.
		n, eerr := mc.Exists(ctx, tr.RecordKey(k)).Result()
		switch {
		case eerr == nil && n == 1:
			held++
			if ok || !errors.Is(err, redisbus.ErrNotReplicated) {
				t.Errorf("add of a key on the master of the paused replica = %v, %v; want false, ErrNotReplicated", ok, err)
			}
		case eerr != nil && strings.HasPrefix(eerr.Error(), "MOVED"):
			other++
			if !ok || err != nil {
				t.Errorf("add of a key on another master = %v, %v; want true, nil", ok, err)
			}
		default:
			t.Fatalf("EXISTS on the master: %v, %v", n, eerr)
		}
	}
	if held == 0 || other == 0 {
		t.Fatalf("%d keys on the paused replica's master, %d elsewhere: want some of each", held, other)
	}
}
