package redisbus_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// pubsubIDs returns the ids of the pub/sub clients that srv serves.
func pubsubIDs(t *testing.T, rc *redis.Client) []string {
	t.Helper()
	cl, err := rc.Do(context.Background(), "CLIENT", "LIST", "TYPE", "pubsub").Text()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, line := range strings.Split(strings.TrimSpace(cl), "\n") {
		for _, f := range strings.Fields(line) {
			if id, ok := strings.CutPrefix(f, "id="); ok {
				ids = append(ids, id)
			}
		}
	}
	return ids
}

// TestPingOnLostConnectionIsAGap: Redis drops the subscription's connection
// (here CLIENT KILL; in production an output buffer past its limit) while
// the node's reader is busy delivering a message. A marking PING then fails
// to write, and go-redis makes a new connection and subscribes again inside
// that PING, dropping what the old one held unread. The subscription must
// report the outage, so that the farm settles a gap: before, the reader,
// once free, read on from the new connection with no error, and the node
// never learnt that it had missed messages (TestSlowSubscriberCutOffByRedis
// in farm saw a cut session resume past its grace).
func TestPingOnLostConnectionIsAGap(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rc.Close()
	tr, err := redisbus.Open(srv.URL(), farmtest.FarmName(t))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()

	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	var mu sync.Mutex
	ups, downs := 0, 0
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tr.Subscribe(ctx, func(msg []byte) {
			if string(msg) == "stall" {
				entered <- struct{}{}
				<-release
			}
		}, func(up bool, _ error) {
			mu.Lock()
			defer mu.Unlock()
			if up {
				ups++
			} else if ups > 0 {
				downs++
			}
		})
	}()
	defer func() {
		cancel()
		<-done
	}()
	farmtest.Eventually(t, 10*time.Second, "the subscription is up", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return ups > 0
	})

	// The reader takes a message and stays in its delivery.
	if err := rc.Publish(context.Background(), tr.Channel(), "stall").Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the message was not delivered in 10 s")
	}
	old := pubsubIDs(t, rc)
	if len(old) != 1 {
		t.Fatalf("pub/sub clients %v, want one", old)
	}
	if err := rc.Do(context.Background(), "CLIENT", "KILL", "ID", old[0]).Err(); err != nil {
		t.Fatal(err)
	}
	// The marking pings, every MarkInterval, find the connection gone, and
	// go-redis subscribes again on a new one.
	farmtest.Eventually(t, 10*time.Second, "a new subscription", func() bool {
		ids := pubsubIDs(t, rc)
		return len(ids) == 1 && ids[0] != old[0]
	})
	mu.Lock()
	before := downs
	mu.Unlock()
	if before != 0 {
		t.Logf("the outage was reported while the reader was busy (%d)", before)
	}
	close(release)
	farmtest.Eventually(t, 10*time.Second, "the outage reported once the reader is free", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return downs > 0
	})
}
