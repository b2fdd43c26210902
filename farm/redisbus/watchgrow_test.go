package redisbus_test

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// reshard moves n slots from the master from to the master to with
// redis-cli --cluster reshard.
func reshard(t *testing.T, c *redistest.Cluster, from, to *redistest.Server, n int) {
	t.Helper()
	id := func(s *redistest.Server) string {
		v, err := c.Client(s).Do(context.Background(), "cluster", "myid").Text()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	out, err := exec.Command("redis-cli", "--cluster", "reshard", to.Addr(),
		"--cluster-from", id(from), "--cluster-to", id(to), "--cluster-slots", fmt.Sprint(n),
		"--cluster-yes", "--cluster-pipeline", "1000").CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli --cluster reshard: %v\n%s", err, out)
	}
}

// slotsHeld returns how many slots the master s holds, as it sees itself.
func slotsHeld(t *testing.T, c *redistest.Cluster, s *redistest.Server) int {
	t.Helper()
	text, err := c.Client(s).ClusterNodes(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) < 9 || !strings.Contains(f[2], "myself") {
			continue
		}
		for _, r := range f[8:] {
			if strings.HasPrefix(r, "[") {
				continue
			}
			lo, hi, ok := strings.Cut(r, "-")
			if !ok {
				hi = lo
			}
			a, _ := strconv.Atoi(lo)
			b, _ := strconv.Atoi(hi)
			n += b - a + 1
		}
	}
	return n
}

// TestClusterWatchSeesMasterThatGainedSlots: a master that holds no slots
// when a subscription's watch first asks, and gains some while it is up (a
// shard added to the cluster, or one refilled by a resharding), must be
// watched too: when it dies and its replica is promoted, the subscription
// ends, so that the farm re-sends what the replica may lack. Before, the
// watch compared only the masters of its first answer, and a shard added
// while a node was subscribed was never watched.
func TestClusterWatchSeesMasterThatGainedSlots(t *testing.T) {
	c := redistest.StartCluster(t, 3, 1, time.Second)
	tr, err := redisbus.Open(c.URL("reload=1s"), farmtest.FarmName(t))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx := context.Background()
	// Masters keep their replicas when emptied.
	for _, s := range c.Nodes {
		if err := c.Client(s).ConfigSet(ctx, "cluster-allow-replica-migration", "no").Err(); err != nil {
			t.Fatal(err)
		}
	}
	// The channel's master (home) keeps its slots throughout: other is
	// emptied into third, and refilled from it.
	home := c.MasterOf(redistest.Slot(tr.Channel()))
	var other, third *redistest.Server
	for _, m := range c.Masters() {
		switch {
		case m == home:
		case other == nil:
			other = m
		default:
			third = m
		}
	}
	if home == nil || third == nil {
		t.Fatalf("no master of the channel's slot, or not two others: %s", c.NodesText())
	}
	replicas := c.ReplicasOf(other)
	if len(replicas) != 1 {
		t.Fatalf("%d replicas of %s, want 1: %s", len(replicas), other.Addr(), c.NodesText())
	}
	reshard(t, c, other, third, slotsHeld(t, c, other))
	farmtest.Eventually(t, 30*time.Second, "other emptied", func() bool {
		for _, m := range c.Masters() {
			if m == other {
				return false
			}
		}
		return true
	})

	var ups atomic.Int32
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tr.Subscribe(sctx, func([]byte) {}, func(up bool, _ error) {
			if up {
				ups.Add(1)
			}
		})
	}()
	defer func() {
		cancel()
		<-done
	}()
	farmtest.Eventually(t, 10*time.Second, "the subscription up", func() bool { return ups.Load() > 0 })
	time.Sleep(2 * time.Second) // the watch's first answer: other holds no slots

	// other gains slots while the subscription is up.
	reshard(t, c, third, other, 100)
	farmtest.Eventually(t, 30*time.Second, "other holds slots again", func() bool {
		for _, m := range c.Masters() {
			if m == other {
				return true
			}
		}
		return false
	})
	time.Sleep(2 * time.Second) // an answer that lists other with slots
	if n := ups.Load(); n != 1 {
		t.Fatalf("the subscription came up %d times before the failover, want 1", n)
	}
	redistest.WaitSynced(t, 30*time.Second, replicas...)
	other.Kill()
	farmtest.Eventually(t, 60*time.Second, "the cluster promoted other's replica", func() bool {
		for _, m := range c.Masters() {
			if m == replicas[0] {
				return true
			}
		}
		return false
	})
	promoted := time.Now()
	for ups.Load() < 2 {
		if time.Since(promoted) > 10*time.Second {
			t.Fatalf("the subscription was not made anew within 10s of the promotion of a replica of a master that gained slots after the watch's first answer: %s", c.NodesText())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("subscribed anew %v after the promotion", time.Since(promoted).Round(time.Millisecond))
}
