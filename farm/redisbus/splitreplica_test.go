package redisbus_test

import (
	"context"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// TestClusterReadOnlySplitReadsMaster: on a Redis Cluster with a replica
// per master and a transport whose URL sends reads to replicas
// (read_only=true), a late write and a write-back of a session retired
// in the store (its retirement mark, left by a peer's retirement that
// found no record) write nothing while the record's slot is being
// migrated and the mark has already moved to the importing node. The
// server refuses the one script over the record and its marks while the
// slot is split (TRYAGAIN), and the write is made in steps of one key
// (splitWrite): the steps that read the marks must read them on the
// master, following ASK. A replica of the node giving the slot up no
// longer has the moved mark and answers no ASK: read there, the
// retirement is missed, and the write puts the retired session back,
// whole, on the importing node. So too a split cut over a cut mark that
// ends sooner (read there, the cut lengthened it), and a split take of a
// record already moved (read there, the take left no retirement mark).
func TestClusterReadOnlySplitReadsMaster(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t, 3, 1, 2*time.Second)
	c.WaitReplicasListed(30 * time.Second)
	tr, err := redisbus.Open(c.URL("read_only=true"), farmtest.FarmName(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	ctx := context.Background()
	for _, tc := range []struct {
		key string
		it  transport.Item
	}{
		{"late", transport.Item{Key: "late", Value: []byte("whole"), TTL: time.Hour, Late: true}},
		{"back", transport.Item{Key: "back", Value: []byte("whole"), TTL: time.Hour, NoLonger: true}},
	} {
		// A peer's retirement that finds no record leaves the mark.
		if err := tr.PutRecords(ctx, transport.Item{Key: tc.key, TTL: time.Hour, Retire: true}); err != nil {
			t.Fatal(err)
		}
		rec, mark := tr.RecordKey(tc.key), tr.RetireMarkKey(tc.key)
		src, dst := migrateSlot(t, c, rec)
		if err := c.Client(src).Do(ctx, "WAIT", 1, 5000).Err(); err != nil {
			t.Fatal(err)
		}
		moveKey(t, c, src, dst, mark)
		// The replica of src has the mark's deletion by MIGRATE.
		if n, err := c.Client(src).Do(ctx, "WAIT", 1, 5000).Int(); err != nil || n < 1 {
			t.Fatalf("WAIT = %d, %v", n, err)
		}
		if got := askingPTTL(t, c, src, dst, mark); got <= 0 {
			t.Fatalf("%s: the retirement mark's PTTL after its move = %d", tc.key, got)
		}
		if err := tr.PutRecords(ctx, tc.it); err != nil {
			t.Fatalf("%s: %v", tc.key, err)
		}
		if got := askingPTTL(t, c, src, dst, rec); got != -2 {
			t.Errorf("%s write over a retirement mark on the importing node wrote the record (PTTL %d ms): the split read the marks on a replica", tc.key, got)
		}
	}

	// A cut that finds no record keeps a cut mark that ends sooner
	// (cutScript): read on a replica that no longer has the moved mark,
	// the split cut wrote its own over it, for its longer TTL.
	const key = "cut"
	if err := tr.PutRecords(ctx, transport.Item{Key: key, Value: []byte("short"), TTL: time.Minute, IfPresent: true}); err != nil {
		t.Fatal(err)
	}
	rec, mark := tr.RecordKey(key), tr.CutMarkKey(key)
	src, dst := migrateSlot(t, c, rec)
	moveKey(t, c, src, dst, mark)
	if n, err := c.Client(src).Do(ctx, "WAIT", 1, 5000).Int(); err != nil || n < 1 {
		t.Fatalf("WAIT = %d, %v", n, err)
	}
	// Held back until the slot is split: a cut mark (moved) and no
	// lapsed-cut mark, so that the script over both gets TRYAGAIN.
	if err := tr.PutRecords(ctx, transport.Item{Key: key, Value: []byte("long"), TTL: time.Hour, IfPresent: true}); err != nil {
		t.Fatal(err)
	}
	if got := askingPTTL(t, c, src, dst, mark); got <= 0 || got > time.Minute.Milliseconds() {
		t.Errorf("a split cut over a cut mark that ends sooner left the mark with PTTL %d ms, not at most %d", got, time.Minute.Milliseconds())
	}

	// A take (single use) leaves the retirement mark for what was left of
	// the record (takeScript), or a late write puts the taken session
	// back: read on a replica that no longer has the moved record, the
	// split take found no time left and left no mark.
	const taken = "take"
	if err := tr.PutRecords(ctx, transport.Item{Key: taken, Value: []byte("once"), TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	rec, mark = tr.RecordKey(taken), tr.RetireMarkKey(taken)
	src, dst = migrateSlot(t, c, rec)
	moveKey(t, c, src, dst, rec)
	if n, err := c.Client(src).Do(ctx, "WAIT", 1, 5000).Int(); err != nil || n < 1 {
		t.Fatalf("WAIT = %d, %v", n, err)
	}
	if v, err := tr.TakeRecord(ctx, taken); err != nil || string(v) != "once" {
		t.Fatalf("TakeRecord = %q, %v", v, err)
	}
	if got := askingPTTL(t, c, src, dst, mark); got <= 0 {
		t.Errorf("a split take left no retirement mark (PTTL %d): a late write of the session would put it back", got)
	}
}
