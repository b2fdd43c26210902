package redisbus_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// moveSlot moves slot, holding no keys, from its master to another,
// as redis-cli --cluster reshard does: IMPORTING on the target, MIGRATING
// on the source, then NODE on both and every other master.
func moveSlot(t *testing.T, c *redistest.Cluster, slot int) (from, to *redistest.Server) {
	t.Helper()
	from, to = slotAndOtherMaster(t, c, slot)
	fromID, toID := clusterNodeID(t, c, from), clusterNodeID(t, c, to)
	must := func(s *redistest.Server, args ...any) {
		t.Helper()
		clusterDo(t, c, s, args...)
	}
	must(to, "cluster", "setslot", slot, "importing", fromID)
	must(from, "cluster", "setslot", slot, "migrating", toID)
	must(to, "cluster", "setslot", slot, "node", toID)
	must(from, "cluster", "setslot", slot, "node", toID)
	for _, m := range c.Masters() {
		if m != from && m != to {
			must(m, "cluster", "setslot", slot, "node", toID)
		}
	}
	return from, to
}

// TestClusterChannelSlotMoved: moving the farm's channel's slot to another
// master (a resharding) makes Redis end the node's sharded subscription
// (SUNSUBSCRIBE, sent by the server) on a connection that stays up. The
// node must take that for a gap and subscribe anew on the slot's new
// master, and hear its peers again.
func TestClusterChannelSlotMoved(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t, 3, 0, 2*time.Second)
	name := farmtest.FarmName(t)
	open := func() *redisbus.Transport {
		tr, err := redisbus.Open(c.URL("reload=1s"), name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		return tr
	}
	sub, pub := open(), open()
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var got []string
	var ups, downs int
	done := make(chan struct{})
	go func() {
		defer close(done)
		sub.Subscribe(ctx, func(b []byte) {
			mu.Lock()
			got = append(got, string(b))
			mu.Unlock()
		}, func(up bool, err error) {
			mu.Lock()
			if up {
				ups++
			} else {
				downs++
			}
			mu.Unlock()
		})
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	heard := func(m string) bool {
		mu.Lock()
		defer mu.Unlock()
		return strings.Contains(strings.Join(got, "\n"), m)
	}
	farmtest.Eventually(t, 10*time.Second, "the subscription up", func() bool {
		pub.Publish(context.Background(), []byte("before"))
		return heard("before")
	})

	from, to := moveSlot(t, c, redistest.Slot(sub.Channel()))
	t.Logf("moved slot %d from %s to %s", redistest.Slot(sub.Channel()), from.Addr(), to.Addr())
	for i := 0; ; i++ {
		m := fmt.Sprint("after-", i)
		if err := pub.Publish(context.Background(), []byte(m)); err != nil {
			t.Logf("publish: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
		if heard(m) {
			t.Logf("heard again after %d messages", i)
			break
		}
		if i > 150 {
			mu.Lock()
			t.Fatalf("nothing heard for 15s after the slot moved: ups %d, downs %d", ups, downs)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if downs == 0 {
		t.Errorf("the subscription ended and came back without a gap reported")
	}
}

// TestClusterSubscribeMoved: a node whose map of the cluster's slots
// predates a resharding that moved the channel's slot sends its SSUBSCRIBE
// to the old master, which answers MOVED on a connection that stays up.
// The node must subscribe anew on the new master at once, not wait on a
// connection subscribed to nothing until the subscription's confirmation
// deadline (two health intervals).
func TestClusterSubscribeMoved(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t, 3, 0, 2*time.Second)
	name := farmtest.FarmName(t)
	tr, err := redisbus.Open(c.URL("reload=1h"), name)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	tr.HealthInterval = time.Minute
	// Load the slot map.
	if err := tr.Publish(context.Background(), []byte("x")); err != nil {
		t.Fatal(err)
	}
	moveSlot(t, c, redistest.Slot(tr.Channel()))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	upc := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tr.Subscribe(ctx, func([]byte) {}, func(up bool, err error) {
			if up {
				select {
				case upc <- struct{}{}:
				default:
				}
			}
		})
	}()
	defer func() {
		cancel()
		<-done
	}()
	start := time.Now()
	select {
	case <-upc:
		t.Logf("subscribed after %v", time.Since(start).Round(time.Millisecond))
	case <-time.After(15 * time.Second):
		t.Fatal("not subscribed 15s after the slot moved")
	}
}

// TestResubscribeBackoffStartsAfresh: a subscription that Redis ends after
// it was up (here: the channel's slot moved, again and again) is made anew
// after the shortest wait, 50 ms at most, however many ended before: the
// backoff is for a subscription that cannot be made, not for one that was
// up. Before, the count of failures was never reset, and from the sixth
// end in a process's life every new subscription waited 0.5–1 s, a gap of
// as long in which the node hears nothing.
func TestResubscribeBackoffStartsAfresh(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t, 3, 0, 2*time.Second)
	tr, err := redisbus.Open(c.URL("reload=1s"), farmtest.FarmName(t))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx, cancel := context.WithCancel(context.Background())
	upc := make(chan time.Time, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tr.Subscribe(ctx, func([]byte) {}, func(up bool, err error) {
			if up {
				upc <- time.Now()
			}
		})
	}()
	defer func() {
		cancel()
		<-done
	}()
	wait := func() time.Time {
		t.Helper()
		select {
		case at := <-upc:
			return at
		case <-time.After(15 * time.Second):
			t.Fatal("the subscription not up within 15s")
			return time.Time{}
		}
	}
	wait()
	best := time.Hour
	for i := range 10 {
		moved := time.Now()
		moveSlot(t, c, redistest.Slot(tr.Channel()))
		took := wait().Sub(moved)
		t.Logf("move %d: up again after %v", i, took.Round(time.Millisecond))
		if i >= 6 {
			best = min(best, took)
		}
	}
	if best >= 480*time.Millisecond { // the capped backoff waits 500 ms at least
		t.Errorf("after six ends, the fastest of four new subscriptions took %v, want well under the backoff's 0.5–1 s", best)
	}
}

// slotAndOtherMaster returns the master of slot in c and another master.
func slotAndOtherMaster(t *testing.T, c *redistest.Cluster, slot int) (from, to *redistest.Server) {
	t.Helper()
	from = c.MasterOf(slot)
	for _, m := range c.Masters() {
		if m != from {
			to = m
			break
		}
	}
	if from == nil || to == nil {
		t.Fatalf("no master of slot %d or no other: %s", slot, c.NodesText())
	}
	return from, to
}

// clusterNodeID returns the cluster node ID of s (CLUSTER MYID).
func clusterNodeID(t *testing.T, c *redistest.Cluster, s *redistest.Server) string {
	t.Helper()
	v, err := c.Client(s).Do(context.Background(), "cluster", "myid").Text()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// clusterDo runs a command on the cluster node s, failing the test if it
// fails.
func clusterDo(t *testing.T, c *redistest.Cluster, s *redistest.Server, args ...any) {
	t.Helper()
	if err := c.Client(s).Do(context.Background(), args...).Err(); err != nil {
		t.Fatalf("%v on %s: %v", args, s.Addr(), err)
	}
}
