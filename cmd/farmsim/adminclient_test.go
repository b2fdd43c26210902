package main

import (
	"context"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// TestAdminClientHidesPassword: a -redis URL that does not parse (a
// password with an unencoded "/") is refused without the password, which
// url.Parse's error quoted before the fix.
func TestAdminClientHidesPassword(t *testing.T) {
	for _, url := range []string{"redis://:s3cret/x@127.0.0.1:6379", "redis+cluster://:s3cret?x@127.0.0.1:7000"} {
		c, err := adminClient(url)
		if err == nil {
			c.Close()
			t.Fatalf("%s: no error", url)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("error shows the password: %v", err)
		}
	}
}

// TestAdminClientTakesFarmURLOptions: a -redis URL with the options that
// tlsfarm's transport reads and go-redis does not (echo, wait_replicas,
// wait_timeout; reload for a cluster) opens farmsim's INFO client too.
// They went to go-redis, which refused them, so farmsim could not
// simulate a farm with wait_replicas, the setting whose cost in store
// operations and latency it is there to measure; a rediss+cluster URL was
// refused as well.
func TestAdminClientTakesFarmURLOptions(t *testing.T) {
	srv := redistest.Start(t)
	url := srv.URL() + "?echo=true&wait_replicas=1&wait_timeout=50ms&dial_timeout=2s"
	tr, err := redisbus.Open(url, redistest.Farm(t))
	if err != nil {
		t.Fatalf("the transport refuses %s: %v", url, err)
	}
	tr.Close()
	c, err := adminClient(url)
	if err != nil {
		t.Fatalf("%s: %v", url, err)
	}
	defer c.Close()
	if _, err := masterStats(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	for _, url := range []string{
		"redis+cluster://127.0.0.1:7000?addr=127.0.0.1:7001&reload=2s&wait_replicas=1&wait_timeout=50ms&echo=false",
		"rediss+cluster://127.0.0.1:7000?addr=127.0.0.1:7001&wait_replicas=1",
	} {
		c, err := adminClient(url)
		if err != nil {
			t.Errorf("%s: %v", url, err)
			continue
		}
		if _, ok := c.(*redis.ClusterClient); !ok {
			t.Errorf("%s: a %T, want a cluster client", url, c)
		}
		c.Close()
	}
}
