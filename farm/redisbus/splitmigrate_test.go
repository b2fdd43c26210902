package redisbus_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// migrating sets the slots of the records of keys migrating from the
// master that holds them to another (the source MIGRATING, the target
// IMPORTING, no key moved), and returns a function that reads a key of
// those slots where it is (on the source, or, where the source answers
// ASK, on the target): its value and PTTL (ms), or found false.
func migrating(t *testing.T, c *redistest.Cluster, tr *redisbus.Transport, keys ...string) func(key string) (v string, pttl int64, found bool) {
	t.Helper()
	ctx := context.Background()
	targets := map[int]*redistest.Server{}
	for _, k := range keys {
		slot := redistest.Slot(tr.RecordKey(k))
		if targets[slot] != nil {
			continue
		}
		src := c.MasterOf(slot)
		var dst *redistest.Server
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
		targets[slot] = dst
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

// openCluster starts a private three-master cluster and opens the farm's
// transport on it.
func openCluster(t *testing.T) (*redistest.Cluster, *redisbus.Transport) {
	c := redistest.StartCluster(t, 3, 0, 2*time.Second)
	tr, err := redisbus.Open(c.URL(""), farmtest.FarmName(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return c, tr
}

// TestClusterWriteBackSlotMigrating: on a Redis Cluster whose slots are
// being migrated (no key moved yet), a write-back (Item.NoLonger, as a
// node writes after its store lost its data) over keys of those slots is
// written, in a batch and alone, and keeps its rules: over no record and
// no mark it writes its value; over a cut mark, the cut; over a
// retirement mark, or a lapsed-cut mark alone, nothing; over a record
// that outlives it, its value; over one that lapses sooner, nothing. The
// server refuses the script, which spans the record and its three marks,
// while their slot is split (TRYAGAIN); a write-back must not fail for
// it, or it is lost until the next heal, and again while the slot moves.
func TestClusterWriteBackSlotMigrating(t *testing.T) {
	t.Parallel()
	c, tr := openCluster(t)
	ctx := context.Background()
	put := func(items ...transport.Item) error { return tr.PutRecords(ctx, items...) }
	var keys []string
	for _, p := range []string{"b:", "o:"} { // batched, one by one
		for _, k := range []string{"none", "cut", "gone", "lapsed", "long", "short"} {
			keys = append(keys, p+k)
		}
		if err := put(
			transport.Item{Key: p + "cut", Value: []byte("cut"), TTL: time.Minute, IfPresent: true},
			transport.Item{Key: p + "gone", TTL: time.Hour, Retire: true},
			transport.Item{Key: p + "lapsed", Value: []byte("whole"), TTL: time.Hour},
			transport.Item{Key: p + "long", Value: []byte("long"), TTL: 2 * time.Hour},
			transport.Item{Key: p + "short", Value: []byte("short"), TTL: time.Minute},
		); err != nil {
			t.Fatal(err)
		}
		// The cut finds the record and leaves its lapsed-cut mark; the
		// record is then taken: the lapsed-cut mark stays alone.
		if err := put(transport.Item{Key: p + "lapsed", Value: []byte("cut"), TTL: time.Minute, Life: 2 * time.Hour, IfPresent: true}); err != nil {
			t.Fatal(err)
		}
		if err := put(transport.Item{Key: p + "lapsed", Retire: true, Taken: true}); err != nil {
			t.Fatal(err)
		}
	}
	migrating(t, c, tr, keys...)

	back := func(k string) transport.Item {
		return transport.Item{Key: k, Value: []byte("back"), TTL: time.Hour, NoLonger: true}
	}
	var batch []transport.Item
	for _, k := range keys[:6] {
		batch = append(batch, back(k))
	}
	if err := put(batch...); err != nil {
		t.Errorf("a batch of write-backs to migrating slots: %v", err)
	}
	for _, k := range keys[6:] {
		if err := put(back(k)); err != nil {
			t.Errorf("%s: a write-back to a migrating slot: %v", k, err)
		}
	}
	want := map[string]string{"none": "back", "cut": "cut", "gone": "", "lapsed": "", "long": "back", "short": "short"}
	for _, k := range keys {
		v, err := tr.GetRecord(ctx, k)
		if err != nil && !errors.Is(err, transport.ErrNotFound) {
			t.Fatal(err)
		}
		if w := want[k[2:]]; string(v) != w {
			t.Errorf("%s: the record reads %q, want %q", k, v, w)
		}
	}
}

// TestClusterCutRetireSlotMigrating: on a Redis Cluster whose slots are
// being migrated (no key moved yet), cuts (Item.IfPresent, with a Life)
// and retirements (Item.Retire) over keys of those slots are written, in
// a batch and alone, and keep their rules: a cut shortens a record that
// outlives it and leaves its lapsed-cut mark, leaves one that lapses
// sooner be, and over no record leaves its cut mark (a late write then
// writes the cut); a retirement deletes the record, and over none leaves
// its mark (a late write then writes nothing). The server refuses both
// scripts, which span the record and its marks, while their slot is
// split (TRYAGAIN).
func TestClusterCutRetireSlotMigrating(t *testing.T) {
	t.Parallel()
	c, tr := openCluster(t)
	ctx := context.Background()
	put := func(items ...transport.Item) error { return tr.PutRecords(ctx, items...) }
	var keys []string
	for _, p := range []string{"b:", "o:"} { // batched, one by one
		for _, k := range []string{"cutrec", "cutnone", "cutshort", "retrec", "retnone"} {
			keys = append(keys, p+k)
		}
		if err := put(
			transport.Item{Key: p + "cutrec", Value: []byte("whole"), TTL: time.Hour},
			transport.Item{Key: p + "cutshort", Value: []byte("short"), TTL: 30 * time.Second},
			transport.Item{Key: p + "retrec", Value: []byte("whole"), TTL: time.Hour},
		); err != nil {
			t.Fatal(err)
		}
	}
	raw := migrating(t, c, tr, keys...)

	write := func(k string) transport.Item {
		if k[2:5] == "ret" {
			return transport.Item{Key: k, TTL: time.Hour, Retire: true}
		}
		return transport.Item{Key: k, Value: []byte("cut"), TTL: time.Minute, Life: 2 * time.Hour, IfPresent: true}
	}
	var batch []transport.Item
	for _, k := range keys[:5] {
		batch = append(batch, write(k))
	}
	if err := put(batch...); err != nil {
		t.Errorf("a batch of cuts and retirements to migrating slots: %v", err)
	}
	for _, k := range keys[5:] {
		if err := put(write(k)); err != nil {
			t.Errorf("%s: a cut or retirement to a migrating slot: %v", k, err)
		}
	}
	for _, k := range keys {
		v, ttl, found := raw(tr.RecordKey(k))
		switch k[2:] {
		case "cutrec":
			if v != "cut" || ttl > time.Minute.Milliseconds() {
				t.Errorf("%s: the record reads %q for %d ms (found %v), want the cut for at most a minute", k, v, ttl, found)
			}
		case "cutshort":
			if v != "short" || ttl > 30*time.Second.Milliseconds() {
				t.Errorf("%s: the record reads %q for %d ms (found %v), want it left be", k, v, ttl, found)
			}
		case "cutnone":
			if found {
				t.Errorf("%s: the cut wrote the record %q", k, v)
			}
			if m, _, ok := raw(tr.CutMarkKey(k)); m != "cut" {
				t.Errorf("%s: the cut mark reads %q (found %v), want the cut", k, m, ok)
			}
		case "retrec", "retnone":
			if found {
				t.Errorf("%s: the retired record reads %q", k, v)
			}
		}
		if k[2:5] == "cut" && k[2:] != "cutshort" {
			if _, ttl, ok := raw(tr.CutLifeKey(k)); !ok || ttl < time.Hour.Milliseconds() {
				t.Errorf("%s: the lapsed-cut mark found %v for %d ms, want it for the Life", k, ok, ttl)
			}
		}
	}
	// Late writes honour the marks the cut and the retirement left.
	late := func(k string) transport.Item {
		return transport.Item{Key: k, Value: []byte("late"), TTL: time.Hour, Late: true}
	}
	if err := put(late("b:cutnone"), late("b:retnone")); err != nil {
		t.Errorf("late writes to migrating slots: %v", err)
	}
	for _, k := range []string{"o:cutnone", "o:retnone"} {
		if err := put(late(k)); err != nil {
			t.Errorf("%s: a late write to a migrating slot: %v", k, err)
		}
	}
	for _, k := range []string{"b:cutnone", "b:retnone", "o:cutnone", "o:retnone"} {
		want := map[bool]string{true: "cut", false: ""}[k[2:5] == "cut"]
		v, err := tr.GetRecord(ctx, k)
		if err != nil && !errors.Is(err, transport.ErrNotFound) {
			t.Fatal(err)
		}
		if string(v) != want {
			t.Errorf("%s: after a late write the record reads %q, want %q", k, v, want)
		}
	}
}
