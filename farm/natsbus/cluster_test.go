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
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/natstest"
)

// TestClusterBucketReplicatedAndFollowsLeader: on a three-server NATS
// cluster, three store-only, write-through nodes make their bucket with
// three replicas by default; when the server leading the stream that holds
// the session records stops, cross-node resumption comes back without a
// restart. Two clusters: the current server in the test's process, stopped
// by Shutdown, and the machine's nats-server (2.9 here: no per-message TTL,
// so the records have their own bucket) killed with SIGKILL.
func TestClusterBucketReplicatedAndFollowsLeader(t *testing.T) {
	t.Parallel()
	type cluster struct {
		url  string
		stop func(name string) // stops the server of that name
	}
	for _, tc := range []struct {
		name  string
		start func(t *testing.T) cluster
	}{
		{"in-process", func(t *testing.T) cluster {
			c := natstest.StartCluster(t, 3)
			return cluster{c.URL(""), func(name string) { c.Server(name).Shutdown() }}
		}},
		{"processes-kill-9", func(t *testing.T) cluster {
			c := natstest.StartProcCluster(t, 3)
			return cluster{c.URL(""), func(name string) { c.Proc(name).Kill() }}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.start(t)
			ms, name := farmtest.Start(t, 3, &farmtest.Options{
				NewTransport: func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
					tr, err := natsbus.Open(c.url, farmName, nil)
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { tr.Close() })
					return tr, tr
				},
				Mode: farm.StoreOnly, WriteThrough: true,
				// Deadlines a loaded CI machine running -race does not
				// miss: what this test bounds is the failover.
				Tweak: func(cfg *farm.Config) {
					cfg.LookupTimeout = 500 * time.Millisecond
					cfg.WriteThroughTimeout = time.Second
				},
			})
			tr := ms[0].Bus.(*natsbus.Transport)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var replicas int
			farmtest.Eventually(t, 20*time.Second, "the bucket open", func() bool {
				n, err := tr.Replicas(ctx)
				replicas = n
				return err == nil
			})
			if replicas != 3 {
				t.Fatalf("bucket replicas = %d; want 3", replicas)
			}
			// Sharing works before the failure (once every node has the bucket open).
			farmtest.Recovery(t, ms, tls.VersionTLS13, 50, 10*time.Second, func() {})

			native, err := tr.NativeTTL(ctx)
			if err != nil {
				t.Fatal(err)
			}
			records := tr.Bucket()
			if !native {
				records = tr.RecordBucket()
			}
			js, err := jetstream.New(tr.Conn())
			if err != nil {
				t.Fatal(err)
			}
			stream, err := js.Stream(ctx, "KV_"+records)
			if err != nil {
				t.Fatal(err)
			}
			info, err := stream.Info(ctx)
			if err != nil || info.Cluster == nil || info.Cluster.Leader == "" || info.Config.Replicas != 3 {
				t.Fatalf("records stream %s: %+v, %v; want 3 replicas and a leader", records, info, err)
			}
			t.Logf("farm %s: records in %s (native TTL %t), stream leader %s", name, records, native, info.Cluster.Leader)

			// Another transport asking for another replica count is told why not.
			other, err := natsbus.Open(c.url+"?replicas=1", name, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer other.Close()
			if _, err := other.GetRecord(ctx, "s:00"); err == nil || !strings.Contains(err.Error(), "3 replica(s), but 1 were asked for") {
				t.Fatalf("bucket with other replicas: %v", err)
			}

			farmtest.Recovery(t, ms, tls.VersionTLS13, 100, 15*time.Second, func() { c.stop(info.Cluster.Leader) })
			farmtest.NoHandshakeErrors(t, ms)
		})
	}
}
