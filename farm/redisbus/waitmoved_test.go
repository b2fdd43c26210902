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

// TestWaitTakeFollowsMovedAndAsk: with wait_replicas on a cluster, a take
// goes with its WAIT to the master of the record's slot. While the slot
// is being migrated and the record is already on the target (ASK), and
// once the slot has moved but the node's map is older (MOVED), the take
// must reach the record where it is, as a take without WAIT does: Redis
// ran nothing where it answered with a redirection. Before, each such
// take failed (a single-use session not resumed, for the length of a
// migration).
func TestWaitTakeFollowsMovedAndAsk(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t, 3, 1, 2*time.Second)
	tr, err := redisbus.Open(c.URL("reload=1h&wait_replicas=1&wait_timeout=1s"), farmtest.FarmName(t))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx := context.Background()
	for _, k := range []string{"ask", "moved"} {
		if err := tr.PutRecords(ctx, transport.Item{Key: k, Value: []byte(k), TTL: time.Minute}); err != nil {
			t.Fatal(err)
		}
	}
	// "ask": its slot migrating, the record already on the target.
	slot := redistest.Slot(tr.RecordKey("ask"))
	from := c.MasterOf(slot)
	var to *redistest.Server
	for _, m := range c.Masters() {
		if m != from {
			to = m
			break
		}
	}
	id := func(s *redistest.Server) string {
		v, err := c.Client(s).Do(ctx, "cluster", "myid").Text()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	must := func(s *redistest.Server, args ...any) {
		t.Helper()
		if err := c.Client(s).Do(ctx, args...).Err(); err != nil {
			t.Fatalf("%v on %s: %v", args, s.Addr(), err)
		}
	}
	must(to, "cluster", "setslot", slot, "importing", id(from))
	must(from, "cluster", "setslot", slot, "migrating", id(to))
	host, port := "127.0.0.1", to.Port
	must(from, "migrate", host, port, tr.RecordKey("ask"), 0, 5000)
	v, err := tr.TakeRecord(ctx, "ask")
	if err != nil || string(v) != "ask" {
		t.Errorf("take of a record migrated, its slot migrating = %q, %v; want the record", v, err)
	}

	// "moved": its slot moved whole, the map of before.
	slot = redistest.Slot(tr.RecordKey("moved"))
	from = c.MasterOf(slot)
	for _, m := range c.Masters() {
		if m != from {
			to = m
			break
		}
	}
	must(to, "cluster", "setslot", slot, "importing", id(from))
	must(from, "cluster", "setslot", slot, "migrating", id(to))
	must(from, "migrate", host, to.Port, tr.RecordKey("moved"), 0, 5000)
	for _, m := range c.Masters() {
		must(m, "cluster", "setslot", slot, "node", id(to))
	}
	v, err = tr.TakeRecord(ctx, "moved")
	if err != nil || string(v) != "moved" {
		t.Errorf("take of a record whose slot moved = %q, %v; want the record", v, err)
	}
}
