package redisbus_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// openCluster starts a private three-master cluster, with replicas
// replicas a master (listed by the masters before it returns), and opens
// the farm's transport on it.
func openCluster(t *testing.T, replicas int) (*redistest.Cluster, *redisbus.Transport) {
	t.Helper()
	c := redistest.StartCluster(t, 3, replicas, 2*time.Second)
	if replicas > 0 {
		c.WaitReplicasListed(30 * time.Second)
	}
	tr, err := redisbus.Open(c.URL(""), farmtest.FarmName(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return c, tr
}

// migrateSlot sets the slot of key migrating from the master that holds it
// to another (the source MIGRATING, the target IMPORTING) and returns both.
func migrateSlot(t *testing.T, c *redistest.Cluster, key string) (src, dst *redistest.Server) {
	t.Helper()
	ctx := context.Background()
	slot := redistest.Slot(key)
	src = c.MasterOf(slot)
	for _, m := range c.Masters() {
		if m != src && dst == nil {
			dst = m
		}
	}
	sc, dc := c.Client(src), c.Client(dst)
	srcID, err := sc.Do(ctx, "CLUSTER", "MYID").Text()
	if err != nil {
		t.Fatal(err)
	}
	dstID, err := dc.Do(ctx, "CLUSTER", "MYID").Text()
	if err != nil {
		t.Fatal(err)
	}
	if err := dc.Do(ctx, "CLUSTER", "SETSLOT", slot, "IMPORTING", srcID).Err(); err != nil {
		t.Fatal(err)
	}
	if err := sc.Do(ctx, "CLUSTER", "SETSLOT", slot, "MIGRATING", dstID).Err(); err != nil {
		t.Fatal(err)
	}
	return src, dst
}

// moveKey moves key from src to dst with MIGRATE, as redis-cli --cluster
// reshard moves the keys of a migrating slot, one at a time.
func moveKey(t *testing.T, c *redistest.Cluster, src, dst *redistest.Server, key string) {
	t.Helper()
	host, port, _ := strings.Cut(dst.Addr(), ":")
	if err := c.Client(src).Migrate(context.Background(), host, port, key, 0, 5*time.Second).Err(); err != nil {
		t.Fatalf("MIGRATE %s: %v", key, err)
	}
}

// askingPTTL returns the PTTL of key (ms) where it is: on src, or, where
// src answers ASK, on dst.
func askingPTTL(t *testing.T, c *redistest.Cluster, src, dst *redistest.Server, key string) int64 {
	t.Helper()
	ctx := context.Background()
	d, err := c.Client(src).PTTL(ctx, key).Result()
	if redis.HasErrorPrefix(err, "ASK") || (err == nil && d == -2) {
		var pttl *redis.DurationCmd
		_, err = c.Client(dst).Pipelined(ctx, func(p redis.Pipeliner) error {
			p.Do(ctx, "ASKING")
			pttl = p.PTTL(ctx, key)
			return nil
		})
		d = pttl.Val()
	}
	if err != nil {
		t.Fatal(err)
	}
	if d < 0 {
		return int64(d)
	}
	return d.Milliseconds()
}

// migrating sets the slots of the records of keys migrating from the
// master that holds them to another (the source MIGRATING, the target
// IMPORTING, no key moved: see migrateSlot), and returns a function that
// reads a key of those slots where it is (on the source, or, where the
// source answers ASK, on the target): its value and PTTL (ms), or found
// false.
func migrating(t *testing.T, c *redistest.Cluster, tr *redisbus.Transport, keys ...string) func(key string) (v string, pttl int64, found bool) {
	t.Helper()
	ctx := context.Background()
	targets := map[int]*redistest.Server{}
	for _, k := range keys {
		if slot := redistest.Slot(tr.RecordKey(k)); targets[slot] == nil {
			_, targets[slot] = migrateSlot(t, c, tr.RecordKey(k))
		}
	}
	return func(key string) (string, int64, bool) {
		t.Helper()
		slot := redistest.Slot(key)
		sc := c.Client(c.MasterOf(slot))
		v, err := sc.Get(ctx, key).Result()
		var ms time.Duration
		if redis.HasErrorPrefix(err, "ASK") {
			var get *redis.StringCmd
			var pttl *redis.DurationCmd
			_, err = c.Client(targets[slot]).Pipelined(ctx, func(p redis.Pipeliner) error {
				p.Do(ctx, "ASKING")
				get = p.Get(ctx, key)
				p.Do(ctx, "ASKING")
				pttl = p.PTTL(ctx, key)
				return nil
			})
			v, ms = get.Val(), pttl.Val()
		} else if err == nil {
			ms, err = sc.PTTL(ctx, key).Result()
		}
		switch {
		case errors.Is(err, redis.Nil):
			return "", 0, false
		case err != nil:
			t.Fatal(err)
		}
		return v, ms.Milliseconds(), true
	}
}

// putBatchThenAlone writes items[:n] in one PutRecords call and then each
// of items[n:] alone, as the farm writes a batch or a single item, into
// slots being migrated. A refused write is reported, not fatal: batch
// names the batch's writes ("a batch of write-backs"), one a single write
// ("a write-back").
func putBatchThenAlone(t *testing.T, tr *redisbus.Transport, items []transport.Item, n int, batch, one string) {
	t.Helper()
	ctx := context.Background()
	if err := tr.PutRecords(ctx, items[:n]...); err != nil {
		t.Errorf("%s to migrating slots: %v", batch, err)
	}
	for _, it := range items[n:] {
		if err := tr.PutRecords(ctx, it); err != nil {
			t.Errorf("%s: %s to a migrating slot: %v", it.Key, one, err)
		}
	}
}
