package natsbus_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/natstest"
)

// TestPrimaryReadLeaderOnlyWithFollowers: a read under
// transport.PrimaryRead is a get from the stream's leader
// ($JS.API.STREAM.MSG.GET) on a bucket of three replicas, and a direct get
// ($JS.API.DIRECT.GET) on a bucket of one, whose only replica is its
// leader: the farm marks every session lookup PrimaryRead, and on a lone
// server they keep the cheaper read. A client of its own watches the
// requests on the wire. Before, a bucket of one had its PrimaryRead reads
// sent to the leader's get too.
func TestPrimaryReadLeaderOnlyWithFollowers(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		url      func(t *testing.T) string
		replicas int
	}{
		{"one replica", func(t *testing.T) string { return embedded(t) }, 1},
		{"three replicas", func(t *testing.T) string { return natstest.StartCluster(t, 3).URL("") }, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			url := tc.url(t)
			tr := openURL(t, url, farmtest.FarmName(t))
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			var n int
			farmtest.Eventually(t, 20*time.Second, "the bucket open", func() bool {
				var err error
				n, err = tr.Replicas(ctx)
				return err == nil
			})
			if n != tc.replicas {
				t.Fatalf("the bucket has %d replicas; want %d", n, tc.replicas)
			}
			// A new cluster's stream may have no leader yet.
			farmtest.Eventually(t, 20*time.Second, "the record written", func() bool {
				return tr.PutRecords(ctx, transport.Item{Key: "s:01", Value: []byte("v"), TTL: time.Minute}) == nil
			})
			spy, err := nats.Connect(url)
			if err != nil {
				t.Fatal(err)
			}
			defer spy.Close()
			var mu sync.Mutex
			seen := map[string]int{}
			if _, err := spy.Subscribe("$JS.API.>", func(m *nats.Msg) {
				kind := ""
				switch {
				case strings.HasPrefix(m.Subject, "$JS.API.DIRECT.GET.KV_"+tr.Bucket()):
					kind = "direct"
				case m.Subject == "$JS.API.STREAM.MSG.GET.KV_"+tr.Bucket():
					kind = "leader"
				default:
					return
				}
				mu.Lock()
				seen[kind]++
				mu.Unlock()
			}); err != nil {
				t.Fatal(err)
			}
			if err := spy.Flush(); err != nil {
				t.Fatal(err)
			}
			const reads = 5
			for range reads {
				if v, err := tr.GetRecord(transport.PrimaryRead(ctx), "s:01"); err != nil || string(v) != "v" {
					t.Fatalf("GetRecord under PrimaryRead = %q, %v", v, err)
				}
			}
			// The spy's own round trip: the requests came before it.
			if err := spy.Flush(); err != nil {
				t.Fatal(err)
			}
			want := map[string]int{"leader": reads}
			if tc.replicas == 1 {
				want = map[string]int{"direct": reads}
			}
			farmtest.Eventually(t, 5*time.Second, "the reads seen", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return seen["direct"]+seen["leader"] >= reads
			})
			mu.Lock()
			defer mu.Unlock()
			if seen["direct"] != want["direct"] || seen["leader"] != want["leader"] {
				t.Errorf("%d reads under PrimaryRead on a bucket of %d: %d direct gets, %d leader gets; want %d, %d",
					reads, tc.replicas, seen["direct"], seen["leader"], want["direct"], want["leader"])
			}
		})
	}
}
