package redisbus_test

import (
	"context"
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
