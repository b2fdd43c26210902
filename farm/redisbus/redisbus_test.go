package redisbus_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

func open(t testing.TB, url, farmName string) *redisbus.Transport {
	t.Helper()
	tr, err := redisbus.Open(url, farmName)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

func TestBusConformance(t *testing.T) {
	url := redistest.URL(t)
	farmtest.TestBus(t, func(t *testing.T, name string) transport.Bus { return open(t, url, name) })
}

func TestStoreConformance(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	farmtest.TestStore(t, func(t *testing.T, name string) transport.Store { return open(t, url, name) })
}

func TestOpenURLs(t *testing.T) {
	farmtest.TestOpenURLs(t, func(url string) (io.Closer, error) { return redisbus.Open(url, "f") }, map[string]string{
		"redis://127.0.0.1:6379/0":                              "",
		"rediss://user:pass@127.0.0.1:6380/1":                   "",
		"redis+cluster://127.0.0.1:7000?addr=127.0.0.1:7001":    "",
		"redis+sentinel://127.0.0.1:26379?master_name=m":        "",
		"redis+cluster://127.0.0.1:7000?reload=2s":              "",
		"redis+cluster://127.0.0.1:7000?reload=soon":            "reload",
		"redis://127.0.0.1:6379?echo=true":                      "",
		"redis+sentinel://127.0.0.1:26379?master_name=m&echo=0": "",
		"redis://127.0.0.1:6379?echo=sometimes":                 "echo",
		"redis://127.0.0.1:6379?reload=2s":                      "reload",
		"http://127.0.0.1":                                      "scheme",
		"redis+bogus://127.0.0.1":                               "variant",
		"redis://user:s3cret@[::1":                              "redisbus",
	})
	if _, err := redisbus.Open("redis://127.0.0.1:6379", "bad{name}"); err == nil {
		t.Error("farm name with braces accepted")
	}
	for url, want := range map[string]bool{"redis://127.0.0.1:6379": false, "redis://127.0.0.1:6379?echo=true": true, "redis://127.0.0.1:6379?echo=false&db=1": false} {
		tr, err := redisbus.Open(url, "f")
		if err != nil {
			t.Fatal(err)
		}
		if tr.Echo != want {
			t.Errorf("%s: Echo = %v, want %v", url, tr.Echo, want)
		}
		tr.Close()
	}
}

// TestKeyLayout: coordination keys and the bus share the farm's hash tag
// (one slot of a cluster, for the scripts); session records are tagged by
// their own key, so that they spread over every slot.
func TestKeyLayout(t *testing.T) {
	tr, err := redisbus.Open("redis://127.0.0.1:6379", "prod")
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	for _, k := range []string{tr.Key("lease"), tr.Key("revoked"), tr.Channel()} {
		if !strings.HasPrefix(k, "tlsfarm:{prod}:") {
			t.Errorf("%q is outside the farm's hash tag", k)
		}
	}
	if k := tr.RecordKey("s:abc"); k != "tlsfarm:prod:{s:abc}" {
		t.Errorf("RecordKey(s:abc) = %q, want tlsfarm:prod:{s:abc}", k)
	}
	if s := redistest.Slot("foo"); s != 12182 { // CLUSTER KEYSLOT foo
		t.Fatalf("Slot(foo) = %d, want 12182", s)
	}
	slots := map[int]bool{}
	for i := range 64 {
		k := tr.RecordKey(fmt.Sprintf("s:%064x", i*7919))
		slots[redistest.Slot(k)] = true
	}
	if len(slots) < 60 {
		t.Errorf("64 session records fall in only %d slots", len(slots))
	}
}

// TestPutAndPublish: one transport.Batcher call writes its records, deletes its
// keys (after the writes, as PutRecords then DeleteRecords would) and
// publishes its messages, which a peer receives.
func TestPutAndPublish(t *testing.T) {
	url := redistest.URL(t)
	name := redistest.Farm(t)
	tr, peer := open(t, url, name), open(t, url, name)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := make(chan []byte, 4)
	up := make(chan struct{}, 1)
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	go peer.Subscribe(sctx, func(m []byte) { got <- m }, func(ok bool, _ error) {
		if ok {
			select {
			case up <- struct{}{}:
			default:
			}
		}
	})
	select {
	case <-up:
	case <-ctx.Done():
		t.Fatal("no subscription")
	}
	if err := tr.PutRecords(ctx, transport.Item{Key: "old", Value: []byte("1"), TTL: time.Minute},
		transport.Item{Key: "kept", Value: []byte("2"), TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	err := tr.PutAndPublish(ctx, []transport.Item{{Key: "new", Value: []byte("3"), TTL: time.Minute}, {Key: "both", Value: []byte("4"), TTL: time.Minute}},
		[]string{"old", "both", "absent"}, [][]byte{[]byte("m1"), []byte("m2")})
	if err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{"old": "", "both": "", "kept": "2", "new": "3"} {
		v, err := tr.GetRecord(ctx, key)
		switch {
		case want == "" && !errors.Is(err, transport.ErrNotFound):
			t.Errorf("record %q: %q, %v; want it deleted", key, v, err)
		case want != "" && (err != nil || string(v) != want):
			t.Errorf("record %q: %q, %v; want %q", key, v, err, want)
		}
	}
	for _, want := range []string{"m1", "m2"} {
		select {
		case m := <-got:
			if string(m) != want {
				t.Errorf("message %q, want %q", m, want)
			}
		case <-ctx.Done():
			t.Fatalf("message %q not delivered", want)
		}
	}
}

// TestSwapRecord: SwapRecord writes the record, with its TTL, and returns
// the value it replaced, or ErrNotFound.
func TestSwapRecord(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	tr := open(t, url, redistest.Farm(t))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if old, err := tr.SwapRecord(ctx, transport.Item{Key: "c:1", Value: []byte("a"), TTL: time.Minute}); !errors.Is(err, transport.ErrNotFound) || old != nil {
		t.Fatalf("first swap: %q, %v; want ErrNotFound", old, err)
	}
	// 2 s: a shorter TTL has run out on a loaded machine before the read
	// below.
	const ttl = 2 * time.Second
	old, err := tr.SwapRecord(ctx, transport.Item{Key: "c:1", Value: []byte("b"), TTL: ttl})
	if err != nil || string(old) != "a" {
		t.Fatalf("second swap: %q, %v; want \"a\"", old, err)
	}
	if v, err := tr.GetRecord(ctx, "c:1"); err != nil || string(v) != "b" {
		t.Fatalf("after the swap: %q, %v; want \"b\"", v, err)
	}
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	rc := redis.NewClient(opt)
	defer rc.Close()
	if d, err := rc.PTTL(ctx, tr.RecordKey("c:1")).Result(); err != nil || d <= 0 || d > ttl {
		t.Fatalf("the swapped record's TTL is %v, %v; want at most %v (the swap's, not the first's minute)", d, err, ttl)
	}
	farmtest.Eventually(t, ttl+10*time.Second, "the swapped record expired", func() bool {
		_, err := tr.GetRecord(ctx, "c:1")
		return errors.Is(err, transport.ErrNotFound)
	})
}

// TestOpenRejectsNegativePoolSize: go-redis parses a negative pool_size
// and then panics making the pool (at Open, or for a cluster at the first
// command): Open must return an error instead.
func TestOpenRejectsNegativePoolSize(t *testing.T) {
	farmtest.TestOpenURLs(t, func(url string) (io.Closer, error) { return redisbus.Open(url, "f") }, map[string]string{
		"redis://user:s3cret@127.0.0.1:6379/?pool_size=-3":                         "pool_size",
		"redis+cluster://user:s3cret@127.0.0.1:7000/?pool_size=-1":                 "pool_size",
		"redis+sentinel://user:s3cret@127.0.0.1:26379/?master_name=m&pool_size=-2": "pool_size",
		"redis://127.0.0.1:6379/?pool_size=0":                                      "",
		"redis://127.0.0.1:6379/?pool_size=4":                                      "",
	})
}

// TestOpenRejectsClusterDB: a Redis Cluster has database 0 only, and
// go-redis ignores a cluster URL's path: a database number there must be
// an error, not silently database 0.
func TestOpenRejectsClusterDB(t *testing.T) {
	farmtest.TestOpenURLs(t, func(url string) (io.Closer, error) { return redisbus.Open(url, "f") }, map[string]string{
		"redis+cluster://user:s3cret@127.0.0.1:7000/3":          "database",
		"rediss+cluster://127.0.0.1:7000/1?addr=127.0.0.1:7001": "database",
		"redis+cluster://127.0.0.1:7000/0":                      "",
		"redis+cluster://127.0.0.1:7000/":                       "",
		"redis+cluster://127.0.0.1:7000":                        "",
	})
}

// TestOpenRequiresMasterName: a Sentinel URL without master_name names no
// master to ask the sentinels for: Open must say so, not return a
// transport whose every command fails.
func TestOpenRequiresMasterName(t *testing.T) {
	farmtest.TestOpenURLs(t, func(url string) (io.Closer, error) { return redisbus.Open(url, "f") }, map[string]string{
		"redis+sentinel://user:s3cret@127.0.0.1:26379/":  "master_name",
		"redis+sentinel://127.0.0.1:26379?master_name=":  "master_name",
		"redis+sentinel://127.0.0.1:26379?master_name=m": "",
	})
}

// TestSubscribeBacksOffWhileRedisIsDown: once a subscription's connection
// is lost and Redis stays unreachable, Subscribe retries with a growing
// wait (to 1 s), not every 100 ms: a farm of nodes must not hammer a
// Redis that is coming back, nor flood its state function.
func TestSubscribeBacksOffWhileRedisIsDown(t *testing.T) {
	t.Parallel()
	p := nettest.NewProxy(t, "127.0.0.1:6379")
	tr := open(t, "redis://"+p.Addr+"/?dial_timeout=200ms", farmtest.FarmName(t))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	downs := 0
	up := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tr.Subscribe(ctx, func([]byte) {}, func(ok bool, _ error) {
			if ok {
				select {
				case up <- struct{}{}:
				default:
				}
				return
			}
			mu.Lock()
			downs++
			mu.Unlock()
		})
	}()
	select {
	case <-up:
	case <-time.After(10 * time.Second):
		t.Fatal("not subscribed")
	}
	p.Cut()
	time.Sleep(4 * time.Second)
	mu.Lock()
	n := downs
	mu.Unlock()
	t.Logf("%d down reports in 4 s", n)
	// Backoff from 100 ms doubling to 1 s, with jitter: about 8 attempts
	// in 4 s. Every 100 ms (and a failed reconnect): about 20.
	if n > 13 {
		t.Errorf("%d down reports (and as many reconnects) in 4 s of outage: no backoff", n)
	}
	// The wait is bounded: the subscription is back soon after Redis.
	p.Restore()
	select {
	case <-up:
	case <-time.After(5 * time.Second):
		t.Fatal("not subscribed again within 5 s of Redis coming back")
	}
	cancel()
	<-done
}
