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

// TestCutMarkPutAndPublish: a cut that finds no record leaves a cut
// mark, which a late write applies (see farmtest.CheckCutMark, run by
// TestStoreConformance) in a batch with PutAndPublish too, and after the
// server lost its scripts.
func TestCutMarkPutAndPublish(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	tr := open(t, srv.URL(), farmtest.FarmName(t))

	ctx := context.Background()
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rc.Close()
	for i, flush := range []bool{false, true} {
		key := []string{"s:pp", "s:pp-flushed"}[i]
		if err := tr.PutRecords(ctx, transport.Item{Key: key, Value: []byte("cut"), TTL: time.Minute, IfPresent: true}); err != nil {
			t.Fatal(err)
		}
		if flush {
			if err := rc.ScriptFlush(ctx).Err(); err != nil {
				t.Fatal(err)
			}
		}
		items := []transport.Item{{Key: key, Value: []byte("whole"), TTL: time.Hour, Late: true}, {Key: key + "-new", Value: []byte("new"), TTL: time.Hour}}
		if err := tr.PutAndPublish(ctx, items, []string{"s:gone"}, [][]byte{[]byte("m")}); err != nil {
			t.Fatal(err)
		}
		if v, err := tr.GetRecord(ctx, key); err != nil || string(v) != "cut" {
			t.Errorf("PutAndPublish (scripts flushed: %v): the late write reads %q, %v; want the cut", flush, v, err)
		}
		if ttl := rc.PTTL(ctx, tr.RecordKey(key)).Val(); ttl > time.Minute {
			t.Errorf("PutAndPublish (scripts flushed: %v): the late write keeps %v, past the cut's minute", flush, ttl)
		}
	}
}

// TestCutMarkCluster: on a Redis Cluster, the cut mark lies in its
// record's slot (a script over keys of two slots fails with CROSSSLOT),
// and the cuts and late writes of records spread over every master keep
// and apply it.
func TestCutMarkCluster(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t, 3, 0, 2*time.Second)
	tr, err := redisbus.Open(c.URL(""), farmtest.FarmName(t))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	farmtest.CheckCutMark(t, tr)
}

// TestRetireMarkPutAndPublish: a retirement that finds no record leaves a
// retirement mark, in the record's slot, which a late write honours (see
// farmtest.CheckRetireMark, run by TestStoreConformance) in a batch with
// PutAndPublish too, and after the server lost its scripts; a retirement
// that finds the record leaves no mark.
func TestRetireMarkPutAndPublish(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	tr := open(t, srv.URL(), farmtest.FarmName(t))

	ctx := context.Background()
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rc.Close()
	for i, flush := range []bool{false, true} {
		key := []string{"s:rpp", "s:rpp-flushed"}[i]
		if err := tr.PutAndPublish(ctx, []transport.Item{{Key: key, TTL: time.Minute, Retire: true}}, nil, [][]byte{[]byte("m")}); err != nil {
			t.Fatal(err)
		}
		if ttl := rc.PTTL(ctx, tr.RetireMarkKey(key)).Val(); ttl <= 0 || ttl > time.Minute {
			t.Errorf("scripts flushed: %v: the retirement mark has %v left, want up to a minute", flush, ttl)
		}
		if flush {
			if err := rc.ScriptFlush(ctx).Err(); err != nil {
				t.Fatal(err)
			}
		}
		items := []transport.Item{{Key: key, Value: []byte("whole"), TTL: time.Hour, Late: true}, {Key: key + "-new", Value: []byte("new"), TTL: time.Hour}}
		if err := tr.PutAndPublish(ctx, items, []string{"s:gone"}, [][]byte{[]byte("m")}); err != nil {
			t.Fatal(err)
		}
		if v, err := tr.GetRecord(ctx, key); !errors.Is(err, transport.ErrNotFound) {
			t.Errorf("PutAndPublish (scripts flushed: %v): the late write reads %q, %v; want no record", flush, v, err)
		}
	}
	if err := tr.PutRecords(ctx, transport.Item{Key: "s:rpp-there", Value: []byte("v"), TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if err := tr.PutRecords(ctx, transport.Item{Key: "s:rpp-there", TTL: time.Hour, Retire: true}); err != nil {
		t.Fatal(err)
	}
	if n := rc.Exists(ctx, tr.RecordKey("s:rpp-there"), tr.RetireMarkKey("s:rpp-there")).Val(); n != 0 {
		t.Errorf("a retirement that found its record left %d keys (record, mark), want none", n)
	}
}

// TestRetireMarkCluster: on a Redis Cluster, the retirement mark lies in
// its record's slot (a script over keys of two slots fails with
// CROSSSLOT), and the retirements and late writes of records spread over
// every master keep and honour it.
func TestRetireMarkCluster(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t, 3, 0, 2*time.Second)
	tr, err := redisbus.Open(c.URL(""), farmtest.FarmName(t))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	farmtest.CheckRetireMark(t, tr)
}
