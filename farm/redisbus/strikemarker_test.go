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
	// The server holds the farm's strike script only once the register
	// was renewed (see TestStrikeRegisterUnknownUntilRenewed).
	if err := tr.RenewRegister(ctx, nil, time.Hour); err != nil {
		t.Fatal(err)
	}
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

// TestStrikeRegisterUnknownUntilRenewed: a server that lost its scripts
// (here by SCRIPT FLUSH; a restart, even from persisted data, and a
// failover do the same) answers a strike with ErrRegisterUnknown until
// the register is renewed, and the renewal makes each group's register
// begin at the server's clock, whatever its marker said.
func TestStrikeRegisterUnknownUntilRenewed(t *testing.T) {
	srv := redistest.Start(t)
	tr, err := redisbus.Open(srv.URL(), farmtest.FarmName(t))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer c.Close()
	ctx := context.Background()
	groups := []string{"once:00", "once:01"}
	it := transport.Item{Key: "k", Value: []byte{1}, TTL: time.Minute}
	since := time.Now().Add(-time.Minute)
	for round := range 2 {
		if ok, err := tr.StrikeRecord(ctx, groups[0], it, since, time.Hour); ok || !errors.Is(err, transport.ErrRegisterUnknown) {
			t.Fatalf("round %d, before the renewal: fresh %v, %v; want %v", round, ok, err, transport.ErrRegisterUnknown)
		}
		old := time.Now().Add(-time.Hour).UnixMilli()
		for _, g := range groups {
			if err := c.Set(ctx, tr.RecordKey(g), old, time.Hour).Err(); err != nil {
				t.Fatal(err)
			}
		}
		renewed := time.Now().Add(-time.Second)
		if err := tr.RenewRegister(ctx, groups, time.Hour); err != nil {
			t.Fatal(err)
		}
		for _, g := range groups {
			v, err := c.Get(ctx, tr.RecordKey(g)).Int64()
			if err != nil || time.UnixMilli(v).Before(renewed) {
				t.Fatalf("round %d: marker of %s after the renewal: %d, %v; want the server's clock", round, g, v, err)
			}
		}
		if ok, err := tr.StrikeRecord(ctx, groups[1], it, since, time.Hour); ok || !errors.Is(err, transport.ErrRegisterNewer) {
			t.Fatalf("round %d, a ticket issued before the renewal: fresh %v, %v; want %v", round, ok, err, transport.ErrRegisterNewer)
		}
		if ok, err := tr.StrikeRecord(ctx, groups[1], it, time.Now().Add(time.Minute), time.Hour); !ok || err != nil {
			t.Fatalf("round %d, a ticket issued after the renewal: fresh %v, %v; want fresh", round, ok, err)
		}
		if err := c.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		if err := c.Del(ctx, tr.RecordKey(groups[1])+":k").Err(); err != nil {
			t.Fatal(err)
		}
	}
}
