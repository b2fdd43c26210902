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

// TestStrikeMarkerNotANumber: a group's marker that holds no finite number
// (Redis's Lua reads "nan" and "inf" as numbers, and a NaN compares false
// with every time) is written again with the server's clock, as one that
// is missing: a ticket issued before then is refused, never let through.
func TestStrikeMarkerNotANumber(t *testing.T) {
	srv := redistest.Start(t)
	tr, err := redisbus.Open(srv.URL(), farmtest.FarmName(t))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer c.Close()
	ctx := context.Background()
	since := time.Now().Add(-time.Hour)
	for i, bad := range []string{"nan", "-nan", "inf", "-inf", "abc", ""} {
		group := "once:" + string(rune('a'+i))
		if err := c.Set(ctx, tr.RecordKey(group), bad, time.Hour).Err(); err != nil {
			t.Fatal(err)
		}
		it := transport.Item{Key: "k", Value: []byte{1}, TTL: time.Minute}
		ok, err := tr.StrikeRecord(ctx, group, it, since, time.Hour)
		if ok || !errors.Is(err, transport.ErrRegisterNewer) {
			t.Errorf("marker %q: fresh %v, %v; want %v", bad, ok, err, transport.ErrRegisterNewer)
		}
		v, err := c.Get(ctx, tr.RecordKey(group)).Int64()
		if err != nil || time.UnixMilli(v).Before(since) {
			t.Errorf("marker %q was not written again with the server's clock: %d, %v", bad, v, err)
		}
	}
}
