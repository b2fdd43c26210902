package redisbus_test

import (
	"context"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// TestClusterPublishBatchFollowsFailover: a node that only publishes
// batches (several messages, one pipeline) on a Redis Cluster whose
// channel's master dies must reach the promoted replica once the cluster
// has promoted it, as every other failed command makes the transport read
// the slot map again; not only at the periodic reload (here an hour).
func TestClusterPublishBatchFollowsFailover(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t, 3, 1, time.Second)
	tr, err := redisbus.Open(c.URL("reload=1h"), farmtest.FarmName(t))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx := context.Background()
	batch := func() error {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		return tr.Publish(ctx, []byte("a"), []byte("b"))
	}
	if err := batch(); err != nil {
		t.Fatal(err)
	}
	home := c.MasterOf(redistest.Slot(tr.Channel()))
	replicas := c.ReplicasOf(home)
	if len(replicas) != 1 {
		t.Fatalf("%d replicas of the channel's master, want 1: %s", len(replicas), c.NodesText())
	}
	home.Kill()
	farmtest.Eventually(t, 60*time.Second, "the cluster promoted the replica", func() bool {
		return c.MasterOf(redistest.Slot(tr.Channel())) == replicas[0]
	})
	promoted := time.Now()
	var last error
	for time.Since(promoted) < 10*time.Second {
		if last = batch(); last == nil {
			t.Logf("published again %v after the promotion", time.Since(promoted).Round(time.Millisecond))
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("batches still fail 10s after the promotion: %v", last)
}
