package redisbus_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/transport"
)

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
	c, tr := openCluster(t, 0)
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
	var items []transport.Item
	for _, k := range keys {
		items = append(items, back(k))
	}
	putBatchThenAlone(t, tr, items, 6, "a batch of write-backs", "a write-back")
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
	c, tr := openCluster(t, 0)
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
	var items []transport.Item
	for _, k := range keys {
		items = append(items, write(k))
	}
	putBatchThenAlone(t, tr, items, 5, "a batch of cuts and retirements", "a cut or retirement")
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
	lates := []transport.Item{late("b:cutnone"), late("b:retnone"), late("o:cutnone"), late("o:retnone")}
	putBatchThenAlone(t, tr, lates, 2, "late writes", "a late write")
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
