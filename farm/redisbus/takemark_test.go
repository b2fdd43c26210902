package redisbus_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// TestTakeMarkLife: the retirement mark a take leaves (takeScript) lasts
// for the taken record's remaining life: it lengthens a mark that was
// there and ends sooner, never shortens one that ends later, and leaves a
// mark without expiry as it is; a take that finds no record (a bogus
// ticket) leaves no key at all, with or without WAIT, and with the
// server's scripts flushed (EVAL instead of EVALSHA).
func TestTakeMarkLife(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx := context.Background()
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rc.Close()
	for i, query := range []string{"", "?wait_replicas=1&wait_timeout=10ms"} {
		tr, err := redisbus.Open(srv.URL()+query, farmtest.FarmName(t))
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		for _, flushed := range []bool{false, true} {
			if flushed {
				if err := rc.ScriptFlush(ctx).Err(); err != nil {
					t.Fatal(err)
				}
			}
			put := func(it transport.Item) {
				t.Helper()
				if err := tr.PutRecords(ctx, it); err != nil {
					t.Fatal(err)
				}
			}
			take := func(k string) {
				t.Helper()
				if query != "" {
					// No replica acknowledges it: the take is an error,
					// the record is taken all the same.
					if _, err := tr.TakeRecord(ctx, k); !errors.Is(err, redisbus.ErrNotReplicated) {
						t.Fatalf("%s: TakeRecord = %v, want ErrNotReplicated", k, err)
					}
					return
				}
				if v, err := tr.TakeRecord(ctx, k); err != nil || string(v) != "v" {
					t.Fatalf("TakeRecord(%s) = %q, %v; want %q", k, v, err, "v")
				}
			}
			mark := func(k string) time.Duration {
				t.Helper()
				d, err := rc.PTTL(ctx, tr.RetireMarkKey(k)).Result()
				if err != nil {
					t.Fatal(err)
				}
				return d
			}
			name := func(k string) string {
				if flushed {
					k += "-flushed"
				}
				return fmt.Sprintf("s:takemark%d-%s", i, k)
			}

			// No mark before: the record's remaining life.
			fresh := name("fresh")
			put(transport.Item{Key: fresh, Value: []byte("v"), TTL: time.Hour})
			take(fresh)
			if d := mark(fresh); d < 59*time.Minute || d > time.Hour {
				t.Errorf("%s: the mark has %v left, want the record's hour", fresh, d)
			}
			// A mark that ends sooner: lengthened to the record's life.
			sooner := name("sooner")
			put(transport.Item{Key: sooner, TTL: time.Minute, Retire: true})
			put(transport.Item{Key: sooner, Value: []byte("v"), TTL: time.Hour})
			take(sooner)
			if d := mark(sooner); d < 59*time.Minute || d > time.Hour {
				t.Errorf("%s: the mark has %v left, want the record's hour", sooner, d)
			}
			// A mark that ends later: kept.
			later := name("later")
			put(transport.Item{Key: later, TTL: time.Hour, Retire: true})
			put(transport.Item{Key: later, Value: []byte("v"), TTL: time.Minute})
			take(later)
			if d := mark(later); d < 59*time.Minute || d > time.Hour {
				t.Errorf("%s: the mark has %v left, want its own hour", later, d)
			}
			// A mark without expiry: kept so.
			forever := name("forever")
			if err := rc.Set(ctx, tr.RetireMarkKey(forever), "1", 0).Err(); err != nil {
				t.Fatal(err)
			}
			put(transport.Item{Key: forever, Value: []byte("v"), TTL: time.Hour})
			take(forever)
			if d := mark(forever); d != -1 {
				t.Errorf("%s: the mark has %v left, want no expiry (-1)", forever, d)
			}
			// No record: no key.
			bogus := name("bogus")
			if v, err := tr.TakeRecord(ctx, bogus); !errors.Is(err, transport.ErrNotFound) {
				t.Fatalf("TakeRecord of no record = %q, %v; want ErrNotFound", v, err)
			}
			if n := rc.Exists(ctx, tr.RecordKey(bogus), tr.RetireMarkKey(bogus)).Val(); n != 0 {
				t.Errorf("%s: a take that found no record left %d keys, want none", bogus, n)
			}
		}
	}
}

// TestTakeSplitKeepsLongerMark: a take whose record and mark are split by
// a slot migration (the mark already on the target: TRYAGAIN, takeSplit)
// leaves the mark as the script does: one that ends later than the record
// stays so, and the take of a record with no mark leaves one for the
// record's life, on the node the slot migrates to.
func TestTakeSplitKeepsLongerMark(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t, 3, 0, 2*time.Second)
	tr := open(t, c.URL("reload=1h"), redistest.Farm(t))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	put := func(it transport.Item) {
		t.Helper()
		if err := tr.PutRecords(ctx, it); err != nil {
			t.Fatal(err)
		}
	}
	// "later": a retirement's hour-long mark, then the record, for a
	// minute, and the mark alone migrated.
	put(transport.Item{Key: "later", TTL: time.Hour, Retire: true})
	put(transport.Item{Key: "later", Value: []byte("v"), TTL: time.Minute})
	to := migrateRecord(t, c, tr.RetireMarkKey("later"))
	// "none": a record with no mark, its slot migrating, the record not.
	put(transport.Item{Key: "none", Value: []byte("v"), TTL: time.Hour})
	slot := redistest.Slot(tr.RecordKey("none"))
	from, noneTo := slotAndOtherMaster(t, c, slot)
	clusterDo(t, c, noneTo, "cluster", "setslot", slot, "importing", clusterNodeID(t, c, from))
	clusterDo(t, c, from, "cluster", "setslot", slot, "migrating", clusterNodeID(t, c, noneTo))

	for _, k := range []string{"later", "none"} {
		if v, err := tr.TakeRecord(ctx, k); err != nil || string(v) != "v" {
			t.Fatalf("TakeRecord(%s) = %q, %v; want %q", k, v, err, "v")
		}
	}
	// The slots are importing there: ASKING first.
	markLeft := func(s *redistest.Server, k string) time.Duration {
		t.Helper()
		var pttl *redis.DurationCmd
		_, err := c.Client(s).Pipelined(ctx, func(p redis.Pipeliner) error {
			p.Do(ctx, "asking")
			pttl = p.PTTL(ctx, tr.RetireMarkKey(k))
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return pttl.Val()
	}
	if d := markLeft(to, "later"); d < 59*time.Minute || d > time.Hour {
		t.Errorf("later: the mark has %v left, want its own hour", d)
	}
	if d := markLeft(noneTo, "none"); d < 59*time.Minute || d > time.Hour {
		t.Errorf("none: the mark has %v left, want the record's hour", d)
	}
}
