package farm_test

import (
	"context"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// TestRevocationRetryAddsNoTombstone: a write of revocations to the store
// that fails part-way (the store stops answering for longer than
// OpTimeout once some of its tombstones are in) is tried again whole; the
// retry must write the tombstones already in as they are, not add a
// second member for each. It sealed each one anew (a new nonce and time),
// so every write cut short left as many extra members as it had written:
// TestManyPendingRevocationsReachTheStore found 10529 for 8000 on a loaded
// machine, where its 500 ms OpTimeout cut chunks short. The node reaches
// the store through a proxy that holds its bytes; its bus, and the test's
// reads of the set, do not.
func TestRevocationRetryAddsNoTombstone(t *testing.T) {
	t.Parallel()
	url, px, via := proxiedRedis(t)
	open := openRedis
	// One chunk (BatchSize) of count tombstones takes about 0.3 s here,
	// under -race: well within OpTimeout, when the store answers.
	const count = 1000
	o := farmtest.Options{
		NewTransport: func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
			return open(t, url, farmName), open(t, via, farmName)
		},
		Secret: farm.NewSecret(1),
		Tweak:  func(c *farm.Config) { c.BatchSize = count; c.TallyInterval = -1; c.ProbeInterval = time.Hour },
	}
	name := farmtest.FarmName(t)
	direct := open(t, url, name)
	members := func() int {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		got, err := direct.SetMembers(ctx, farm.TombstoneKey)
		if err != nil {
			t.Fatal(err)
		}
		return len(got)
	}
	n1 := farmtest.Join(t, "n1", name, o)
	farmtest.WaitConnected(t, n1)

	n1.Node.QueueRevocations(1, count, time.Now().Add(3*time.Minute))
	var before int
	farmtest.Eventually(t, 10*time.Second, "some tombstones in the store", func() bool {
		before = members()
		return before >= 20
	})
	px.Freeze()
	if before >= count {
		px.Thaw()
		t.Fatalf("the chunk was written whole (%d tombstones) before the proxy held it", before)
	}
	farmtest.Eventually(t, 10*time.Second, "the store write failed", func() bool {
		return farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_store_write_errors_total") > 0
	})
	px.Thaw()
	farmtest.Eventually(t, 60*time.Second, "every revocation applied", func() bool { return n1.Node.PendingRevocations() == 0 })
	if got := members(); got != count {
		t.Fatalf("the store holds %d tombstones for %d revocations (%d were in when the write was cut short)", got, count, before)
	}
}
