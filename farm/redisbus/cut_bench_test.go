package redisbus_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// BenchmarkCutWrite measures the write of a grace cut (an Item.IfPresent
// over a present record of about a sealed session's size), alone and in
// a pipeline of 16 with as many plain writes (a batch of resumptions: each
// child's record and its parent's cut), against the shared Redis. Each
// cut is shorter than the record it finds, so each is written, and has a
// Life, as the farm's cuts have, so each leaves its lapsed-cut mark (see
// transport.Item.Life). "absent" is a cut that finds no record, which
// leaves its cut mark too.
func BenchmarkCutWrite(b *testing.B) {
	tr, err := redisbus.Open(redistest.URL(b), farmtest.FarmName(b))
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	ctx := context.Background()
	value := make([]byte, 200)
	const keys = 1024
	for i := range keys {
		if err := tr.PutRecords(ctx, transport.Item{Key: fmt.Sprint("p", i), Value: value, TTL: time.Hour}); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("alone", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if err := tr.PutRecords(ctx, transport.Item{Key: fmt.Sprint("p", i%keys), Value: value, TTL: 30*time.Minute - time.Duration(i)*time.Millisecond, IfPresent: true, Life: time.Hour}); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("absent", func(b *testing.B) {
		// A cut that finds no record: it leaves its cut mark and, with a
		// Life, its lapsed-cut mark (see transport.Item.Life).
		i := 0
		for b.Loop() {
			it := transport.Item{Key: fmt.Sprint("a", i), Value: value, TTL: 30 * time.Second, IfPresent: true}
			it.Life = 2 * time.Minute
			if err := tr.PutRecords(ctx, it); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("batch16", func(b *testing.B) {
		i := 0
		items := make([]transport.Item, 0, 32)
		for b.Loop() {
			items = items[:0]
			for range 16 {
				items = append(items,
					transport.Item{Key: fmt.Sprint("c", i%keys), Value: value, TTL: time.Hour},
					transport.Item{Key: fmt.Sprint("p", i%keys), Value: value, TTL: 30*time.Minute - time.Duration(i)*time.Millisecond, IfPresent: true, Life: time.Hour})
				i++
			}
			if err := tr.PutRecords(ctx, items...); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestCutAfterScriptFlush: a cut (Item.IfPresent) and a write-back
// (Item.NoLonger) run a script by its hash; a server that lost its
// scripts (restarted, failed over, flushed) still gets every cut, alone,
// in a batch, and with PutAndPublish, each write-back in a batch (run
// again with its own script: it writes where no record is), and the other
// writes of the batch once each.
func TestCutAfterScriptFlush(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	tr := open(t, srv.URL(), farmtest.FarmName(t))
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rc.Close()
	ctx := context.Background()
	for i, write := range []func(items []transport.Item) error{
		func(items []transport.Item) error { return tr.PutRecords(ctx, items[0]) },
		func(items []transport.Item) error { return tr.PutRecords(ctx, items...) },
		func(items []transport.Item) error {
			return tr.PutAndPublish(ctx, items, []string{"gone"}, [][]byte{[]byte("m")})
		},
	} {
		key := fmt.Sprint("cut", i)
		if err := tr.PutRecords(ctx, transport.Item{Key: key, Value: []byte("whole"), TTL: time.Hour}); err != nil {
			t.Fatal(err)
		}
		if err := rc.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		items := []transport.Item{
			{Key: key, Value: []byte("cut"), TTL: time.Minute, IfPresent: true},
			{Key: key + "-new", Value: []byte("new"), TTL: time.Minute},
			{Key: key + "-back", Value: []byte("back"), TTL: time.Minute, NoLonger: true},
		}
		if err := write(items); err != nil {
			t.Fatalf("write %d after SCRIPT FLUSH: %v", i, err)
		}
		if got, err := tr.GetRecord(ctx, key); err != nil || string(got) != "cut" {
			t.Fatalf("write %d after SCRIPT FLUSH: the record reads %q, %v; want it cut", i, got, err)
		}
		if ttl := rc.PTTL(ctx, tr.RecordKey(key)).Val(); ttl > time.Minute {
			t.Fatalf("write %d after SCRIPT FLUSH: the record keeps %v", i, ttl)
		}
		if i > 0 {
			if got, err := tr.GetRecord(ctx, key+"-back"); err != nil || string(got) != "back" {
				t.Fatalf("write %d after SCRIPT FLUSH: the written-back record reads %q, %v", i, got, err)
			}
		}
	}
}

// BenchmarkWriteBack measures a write-back batch (256 sessions of 300
// bytes into a store that lost them: every key absent) written plain (SET,
// as writeBack did) and as Item.NoLonger (noLongerScript by hash), against
// the shared Redis.
func BenchmarkWriteBack(b *testing.B) {
	farmtest.BenchmarkWriteBack(b, func(b *testing.B) transport.RecordStore {
		tr, err := redisbus.Open(redistest.URL(b), farmtest.FarmName(b))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { tr.Close() })
		return tr
	})
}

// BenchmarkRetire measures a retirement's store write against the shared
// Redis: a plain deletion (DeleteRecords, what a retirement was before
// retirement marks, and what a consumption's still is) and an
// Item.Retire, over a record that is there (the script deletes it, and
// leaves no mark) and over none (it leaves a mark). Each iteration with a
// record writes it first, in the same pipeline.
func BenchmarkRetire(b *testing.B) {
	benchRetire(b, redistest.URL(b))
}

func benchRetire(b *testing.B, url string) {
	tr, err := redisbus.Open(url, farmtest.FarmName(b))
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	ctx := context.Background()
	value := make([]byte, 200)
	b.Run("delete/found", func(b *testing.B) {
		i := 0
		for b.Loop() {
			k := fmt.Sprint("d", i)
			if err := tr.PutAndPublish(ctx, []transport.Item{{Key: k, Value: value, TTL: time.Minute}}, []string{k}, nil); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("retire/found", func(b *testing.B) {
		i := 0
		for b.Loop() {
			k := fmt.Sprint("r", i)
			if err := tr.PutRecords(ctx, transport.Item{Key: k, Value: value, TTL: time.Minute}, transport.Item{Key: k, TTL: time.Minute, Retire: true}); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("delete/absent", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if err := tr.DeleteRecords(ctx, fmt.Sprint("da", i)); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("retire/absent", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if err := tr.PutRecords(ctx, transport.Item{Key: fmt.Sprint("ra", i), TTL: 10 * time.Second, Retire: true}); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}
