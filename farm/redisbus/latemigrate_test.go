package redisbus_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// TestClusterLateWriteSlotMigrating: on a Redis Cluster whose slots are
// being migrated (the source MIGRATING, the target IMPORTING, no key
// moved yet), a late write (Item.Late, as the farm's first writes in
// broadcast mode are) over keys of those slots is written, and honours
// the marks there: one over a cut mark writes the cut, one over a
// retirement mark writes nothing, one with no mark writes its value. The
// server refuses the script, which spans the record and its marks, while
// the slot is split (TRYAGAIN); the write must not fail for it, as each
// new session of a migrating slot would then fail its write until the
// slot moved.
func TestClusterLateWriteSlotMigrating(t *testing.T) {
	t.Parallel()
	c, tr := openCluster(t, 0)
	ctx := context.Background()
	put := func(items ...transport.Item) error { return tr.PutRecords(ctx, items...) }
	if err := put(transport.Item{Key: "s:cut", Value: []byte("cut"), TTL: time.Minute, IfPresent: true},
		transport.Item{Key: "s:gone", TTL: time.Hour, Retire: true}); err != nil {
		t.Fatal(err)
	}

	migrating(t, c, tr, "s:cut", "s:gone", "s:none")

	whole := func(k string) transport.Item {
		return transport.Item{Key: k, Value: []byte("whole"), TTL: time.Hour, Late: true}
	}
	if err := put(whole("s:cut"), whole("s:gone"), whole("s:none")); err != nil {
		t.Fatalf("late writes to migrating slots: %v", err)
	}
	for k, want := range map[string]string{"s:cut": "cut", "s:gone": "", "s:none": "whole"} {
		v, err := tr.GetRecord(ctx, k)
		if err != nil && !errors.Is(err, transport.ErrNotFound) {
			t.Fatal(err)
		}
		if string(v) != want {
			t.Errorf("%s: the record reads %q, want %q", k, v, want)
		}
	}
}
