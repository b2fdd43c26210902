package redisclients

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestClients checks the harness on a private redis-server (skipped where
// redis-server is not installed): each client's batch writes its records
// with their TTL and publishes its message, and each subscriber receives
// every message of the publisher process.
func TestClients(t *testing.T) {
	addr := server(t)
	val := []byte(strings.Repeat("v", valueSize))
	for name, send := range map[string]batcher{
		"goredis": goRedisBatcher(newGoRedis(t, addr), "bus:test"),
		"rueidis": rueidisBatcher(newRueidis(t, addr), "bus:test"),
	} {
		keys := []string{"test:" + name + ":1", "test:" + name + ":2"}
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		err := send(ctx, keys, val, []byte("batch"))
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, k := range keys {
			if got, err := command(addr, "GET", k); err != nil || got != string(val) {
				t.Errorf("%s: GET %s = %d bytes, %v; want the value", name, k, len(got), err)
			}
			ttl, err := command(addr, "PTTL", k)
			if ms, _ := strconv.Atoi(ttl); err != nil || ms <= 0 || ms > int(recordTTL/time.Millisecond) {
				t.Errorf("%s: PTTL %s = %q, %v; want a TTL of at most %v", name, k, ttl, err, recordTTL)
			}
		}
	}
	const n = 5
	for name, mk := range map[string]func(testing.TB, string) subscriber{
		"goredis":       goRedisSubscriber,
		"rueidis":       rueidisSubscriber,
		"rueidis-hooks": rueidisHooksSubscriber,
	} {
		channel := "bus:test:" + name
		ctx, cancel := context.WithCancel(context.Background())
		got := make(chan []byte, n+1)
		wait := mk(t, addr)(ctx, channel, func(p []byte) { got <- p })
		waitSubscribers(t, addr, channel, 1)
		begin, done := startPublisher(t, publisherSpec{addr: addr, channel: channel, n: n, size: subscribeMsgSize, interval: time.Millisecond})
		begin()
		if err := done(); err != nil {
			t.Fatalf("%s: publisher: %v", name, err)
		}
		for i := range n {
			select {
			case p := <-got:
				if len(p) != subscribeMsgSize {
					t.Errorf("%s: message %d is %d bytes, want %d", name, i, len(p), subscribeMsgSize)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("%s: received %d messages of %d", name, i, n)
			}
		}
		cancel()
		wait()
	}
}
