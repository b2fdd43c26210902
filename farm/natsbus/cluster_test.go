package natsbus_test

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/internal/natstest"
)

// TestClusterBucketReplicatedAndFollowsLeader: on a three-server NATS
// cluster, three store-only, write-through nodes make a bucket with three
// replicas by default; when the server leading the bucket's stream stops,
// cross-node resumption comes back without a restart.
func TestClusterBucketReplicatedAndFollowsLeader(t *testing.T) {
	c := natstest.StartCluster(t, 3)
	ms, name := farmtest.Start(t, 3, &farmtest.Options{
		NewTransport: func(t testing.TB, farmName string) (farm.Bus, farm.Store) {
			tr, err := natsbus.Open(c.URL(""), farmName, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { tr.Close() })
			return tr, tr
		},
		Mode: farm.StoreOnly, WriteThrough: true,
	})
	farmtest.Recovery(t, ms, tls.VersionTLS13, 50, time.Millisecond, func() {}) // works before the failure

	tr := ms[0].Bus.(*natsbus.Transport)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if n, err := tr.Replicas(ctx); err != nil || n != 3 {
		t.Fatalf("bucket replicas = %d, %v; want 3", n, err)
	}
	js, err := jetstream.New(tr.Conn())
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(ctx, "KV_"+tr.Bucket())
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil || info.Cluster == nil || info.Cluster.Leader == "" {
		t.Fatalf("stream info: %+v, %v", info, err)
	}
	leader := c.Server(info.Cluster.Leader)
	t.Logf("farm %s: stream leader %s", name, info.Cluster.Leader)

	// Another transport asking for another replica count is told why not.
	other, err := natsbus.Open(c.URL("replicas=1"), name, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.GetRecord(ctx, "s:00"); err == nil || !strings.Contains(err.Error(), "3 replica(s), but 1 were asked for") {
		t.Fatalf("bucket with other replicas: %v", err)
	}

	farmtest.Recovery(t, ms, tls.VersionTLS13, 100, 15*time.Second, func() {
		leader.Shutdown()
	})
	farmtest.NoHandshakeErrors(t, ms)
}
