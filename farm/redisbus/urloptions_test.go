package redisbus_test

import (
	"io"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
)

// TestRepeatedURLOptionRefused: an option given twice is an error that
// names it (and never a password, here a sentinel's master password);
// before the fix echo and reload took the first value and go-redis's own
// options the last. addr, the list of servers, may repeat.
func TestRepeatedURLOptionRefused(t *testing.T) {
	farmtest.TestOpenURLs(t, func(url string) (io.Closer, error) { return redisbus.Open(url, "f") }, map[string]string{
		"redis://user:s3cret@127.0.0.1:6379?echo=true&echo=false":                        `option "echo" is given 2 times`,
		"redis+cluster://127.0.0.1:7000?reload=1s&reload=2s":                             `option "reload" is given 2 times`,
		"rediss://127.0.0.1:6380?dial_timeout=1s&pool_size=4&dial_timeout=2s":            `option "dial_timeout" is given 2 times`,
		"redis+sentinel://127.0.0.1:26379?master_name=m&password=s3cret&password=s3cret": `option "password" is given 2 times`,
		"redis+sentinel://127.0.0.1:26379?master_name=m&master_name=n":                   `option "master_name" is given 2 times`,
		"redis://127.0.0.1:6379?db=1&db=2&db=3":                                          `option "db" is given 3 times`,
		"redis+sentinel://127.0.0.1:26379?master_name=m&wait_replicas=1&wait_replicas=2": `option "wait_replicas" is given 2 times`,
		"redis://127.0.0.1:6379?wait_replicas=1&wait_timeout=1s&wait_timeout=2s":         `option "wait_timeout" is given 2 times`,
		"redis+cluster://127.0.0.1:7000?addr=127.0.0.1:7001&addr=127.0.0.1:7002":         "",
		"redis+sentinel://127.0.0.1:26379?master_name=m&addr=127.0.0.1:1&addr=[::1]:2":   "",
	})
}

// TestWaitURLOptions: wait_replicas and wait_timeout set the Transport's
// WaitReplicas and WaitTimeout, on every kind of URL, and are refused
// when invalid: a negative or non-numeric count, a duration that is not
// positive, a wait_timeout without wait_replicas (it would do nothing).
func TestWaitURLOptions(t *testing.T) {
	for url, want := range map[string][2]int64{
		"redis://127.0.0.1:6379":                                              {0, int64(redisbus.DefaultWaitTimeout)},
		"redis://127.0.0.1:6379?wait_replicas=0":                              {0, int64(redisbus.DefaultWaitTimeout)},
		"redis+sentinel://127.0.0.1:26379?master_name=m&wait_replicas=1":      {1, int64(redisbus.DefaultWaitTimeout)},
		"redis+cluster://127.0.0.1:7000?wait_replicas=2&wait_timeout=20ms":    {2, int64(20 * time.Millisecond)},
		"rediss://127.0.0.1:6380?wait_timeout=1s&wait_replicas=1&pool_size=2": {1, int64(time.Second)},
	} {
		tr, err := redisbus.Open(url, "f")
		if err != nil {
			t.Errorf("%s: %v", url, err)
			continue
		}
		if got := [2]int64{int64(tr.WaitReplicas), int64(tr.WaitTimeout)}; got != want {
			t.Errorf("%s: WaitReplicas, WaitTimeout = %d, %v; want %d, %v", url, got[0], time.Duration(got[1]), want[0], time.Duration(want[1]))
		}
		tr.Close()
	}
	farmtest.TestOpenURLs(t, func(url string) (io.Closer, error) { return redisbus.Open(url, "f") }, map[string]string{
		"redis://127.0.0.1:6379?wait_replicas=-1":                  `wait_replicas="-1": want a count`,
		"redis://127.0.0.1:6379?wait_replicas=one":                 `wait_replicas="one": want a count`,
		"redis://127.0.0.1:6379?wait_replicas=1&wait_timeout=0s":   `wait_timeout="0s": want a positive duration`,
		"redis://127.0.0.1:6379?wait_replicas=1&wait_timeout=soon": `wait_timeout="soon": want a positive duration`,
		"redis://127.0.0.1:6379?wait_timeout=10ms":                 "wait_timeout without wait_replicas",
		"redis://user:s3cret@127.0.0.1:6379?wait_replicas=x":       `wait_replicas="x"`,
	})
}

// TestSentinelReplicaRoutingRefused: a Sentinel URL that routes commands
// to replicas is refused. go-redis's NewFailoverClient panics on
// route_by_latency and route_randomly, which Open passed on; with
// replica_only it sends every command to a replica, where the farm's writes
// fail and its messages reach only that replica's subscribers.
func TestSentinelReplicaRoutingRefused(t *testing.T) {
	farmtest.TestOpenURLs(t, func(url string) (io.Closer, error) { return redisbus.Open(url, "f") }, map[string]string{
		"redis+sentinel://127.0.0.1:26379?master_name=m&route_randomly=true":   "route_randomly",
		"redis+sentinel://127.0.0.1:26379?master_name=m&route_by_latency=true": "route_by_latency",
		"redis+sentinel://127.0.0.1:26379?master_name=m&replica_only=true":     "replica_only",
		"redis+sentinel://127.0.0.1:26379?master_name=m&replica_only=false":    "",
	})
}

// TestClusterReplicaReadsSubscribeOnMaster: every cluster URL option that
// sends reads to replicas leaves the subscription on the masters (see
// TestClusterReadOnlyMarkOrdersMaster for why), and the transport's own
// client as the URL says.
func TestClusterReplicaReadsSubscribeOnMaster(t *testing.T) {
	for _, q := range []string{"", "?read_only=true", "?route_by_latency=true", "?route_randomly=true", "?read_only=true&route_randomly=true"} {
		tr, err := redisbus.Open("redis+cluster://127.0.0.1:7000"+q, "f")
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		if tr.SubscriberReadsReplicas() {
			t.Errorf("%q: the subscription's client reads replicas", q)
		}
		tr.Close()
	}
}
