package natsbus_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
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
			gets := watchGets(t, tr)
			const reads = 5
			for range reads {
				if v, err := tr.GetRecord(transport.PrimaryRead(ctx), "s:01"); err != nil || string(v) != "v" {
					t.Fatalf("GetRecord under PrimaryRead = %q, %v", v, err)
				}
			}
			want := [2]int{0, reads}
			if tc.replicas == 1 {
				want = [2]int{reads, 0}
			}
			if got := gets(reads); got != want {
				t.Errorf("%d reads under PrimaryRead on a bucket of %d: %d direct gets, %d leader gets; want %d, %d",
					reads, tc.replicas, got[0], got[1], want[0], want[1])
			}
		})
	}
}

// watchGets watches, on a connection of its own, the requests tr sends
// to read its bucket's stream: the function it returns waits until it has
// seen at least n since the last call (or 5 s), and returns how many were
// direct gets ($JS.API.DIRECT.GET) and how many the leader's gets
// ($JS.API.STREAM.MSG.GET). The spy connects to the server tr is
// connected to: its subscription is then in place once its flush returns,
// where on another server of a cluster the routes learn of it a moment
// later and the requests sent meanwhile pass unseen.
func watchGets(t *testing.T, tr *natsbus.Transport) func(n int) [2]int {
	t.Helper()
	bucket := tr.Bucket()
	spy, err := nats.Connect(tr.Conn().ConnectedUrl())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(spy.Close)
	var mu sync.Mutex
	var seen [2]int
	if _, err := spy.Subscribe("$JS.API.>", func(m *nats.Msg) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case strings.HasPrefix(m.Subject, "$JS.API.DIRECT.GET.KV_"+bucket+"."):
			seen[0]++
		case m.Subject == "$JS.API.STREAM.MSG.GET.KV_"+bucket:
			seen[1]++
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}
	return func(n int) [2]int {
		t.Helper()
		farmtest.Eventually(t, 5*time.Second, "the reads seen", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return seen[0]+seen[1] >= n
		})
		// Any more on their way come before the spy's own round trip.
		if err := spy.Flush(); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		got := seen
		seen = [2]int{}
		return got
	}
}

// TestPrimaryReadLeaderOnceReplicasAdded: a transport that opened a
// bucket of one replica on a three-server cluster reads it under
// transport.PrimaryRead with direct gets; once an operator has given the
// bucket's stream three replicas, it reads the replica count again (here
// at once, not after 30 s) and sends them to the leader. Before, the count
// was never read again.
func TestPrimaryReadLeaderOnceReplicasAdded(t *testing.T) {
	natsbus.SetReplicasRecheck(t, 0)
	c := natstest.StartCluster(t, 3)
	url := c.URL("")
	name := farmtest.FarmName(t)
	w, err := natsbus.Open(url+"?replicas=1", name, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	farmtest.Eventually(t, 20*time.Second, "the record written", func() bool {
		return w.PutRecords(ctx, transport.Item{Key: "s:01", Value: []byte("v"), TTL: time.Minute}) == nil
	})
	tr := openURL(t, url, name)
	gets := watchGets(t, tr)
	read := func() {
		t.Helper()
		if v, err := tr.GetRecord(transport.PrimaryRead(ctx), "s:01"); err != nil || string(v) != "v" {
			t.Fatalf("GetRecord under PrimaryRead = %q, %v", v, err)
		}
	}
	read()
	if got := gets(1); got != [2]int{1, 0} {
		t.Fatalf("a read under PrimaryRead on a bucket of 1: %d direct gets, %d leader gets; want 1, 0", got[0], got[1])
	}

	js, err := jetstream.New(w.Conn())
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, "KV_"+tr.Bucket())
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	cfg.Replicas = 3
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	// The read that finds the count stale has it read again, in the
	// background; a later read goes to the leader.
	farmtest.Eventually(t, 20*time.Second, "a read under PrimaryRead sent to the leader", func() bool {
		read()
		return gets(1)[1] == 1
	})
}
