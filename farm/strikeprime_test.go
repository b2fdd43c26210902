package farm_test

import (
	"context"
	"encoding/hex"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// TestStrikePrimingAfterFlush: a node whose private Redis, 20 ms away each
// way (a nettest.Proxy), loses its data but keeps its scripts (FLUSHALL)
// writes the 256 markers of its 0-RTT strike register again. Struck one
// group at a time, that took 256 round trips, over 10 s; now it is one
// pipeline, and the markers are back within 2 s of the loss, detection
// included. A strike after it is fresh for a ticket issued after the
// loss.
func TestStrikePrimingAfterFlush(t *testing.T) {
	t.Parallel()
	const latency = 20 * time.Millisecond
	srv := redistest.Start(t)
	p := nettest.NewProxy(t, srv.Addr())
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rc.Close()
	o := &farmtest.Options{
		Mode:         farm.StoreOnly,
		NewTransport: redisTransport("redis://" + p.Addr),
		Tweak: func(c *farm.Config) {
			c.HealInterval = 200 * time.Millisecond
			c.TallyInterval = -1
			c.MaxSkew = 200 * time.Millisecond
			// Each strike of a priming group by group gets
			// LookupTimeout: one that failed would end it early,
			// hiding its length.
			c.LookupTimeout = 2 * time.Second
		},
	}
	ms, _ := farmtest.Start(t, 1, o)
	n1 := ms[0]
	tr := n1.Store.(*redisbus.Transport)
	markers := make([]string, 256)
	for g := range markers {
		markers[g] = tr.RecordKey("once:" + hex.EncodeToString([]byte{byte(g)}))
	}
	present := func() int {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		n, err := rc.Exists(ctx, markers...).Result()
		if err != nil {
			t.Fatal(err)
		}
		return int(n)
	}
	farmtest.Eventually(t, 10*time.Second, "n1 primed the strike register", func() bool { return present() == len(markers) })
	farmtest.Eventually(t, 5*time.Second, "n1 read the store's generation", func() bool { return n1.Node.StoreGeneration() != nil })

	p.SetLatency(latency)
	if err := rc.FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	lost := time.Now()
	const limit = 2 * time.Second
	for present() < len(markers) {
		if time.Since(lost) > 30*time.Second {
			t.Fatalf("after 30 s, %d of %d markers were back", present(), len(markers))
		}
		time.Sleep(5 * time.Millisecond)
	}
	took := time.Since(lost)
	t.Logf("the strike register's markers were back %v after the loss, through %v each way", took.Round(time.Millisecond), latency)
	if took > limit {
		t.Errorf("priming the strike register after the loss took %v, want under %v", took.Round(time.Millisecond), limit)
	}
	// Markers written with the server's clock after the loss: a ticket
	// issued now, after the skew, is fresh.
	time.Sleep(300 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if fresh, err := n1.Node.Strike(ctx, []byte("a ticket issued after the loss"), time.Now(), time.Minute); !fresh || err != nil {
		t.Errorf("a strike for a ticket issued after priming: fresh %t, %v", fresh, err)
	}
}
