package natsbus_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/internal/natstest"
)

// TestReplicaFallbackOnlyForSmallCluster: on a cluster of two servers,
// which cannot place the default three replicas, the farm's bucket is
// made with one; but an error that says nothing of the cluster's size (a
// timeout, a leader election) is returned, not taken as a reason to settle
// for one replica for good, as it was before.
func TestReplicaFallbackOnlyForSmallCluster(t *testing.T) {
	t.Parallel()
	c := natstest.StartCluster(t, 2)
	tr, err := natsbus.Open(c.URL(""), farmtest.FarmName(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if n, err := tr.Replicas(ctx); err != nil || n != 1 {
		t.Fatalf("Replicas on a 2-server cluster = %d, %v; want 1", n, err)
	}

	for _, tt := range []struct {
		err  error
		want bool
	}{
		{&jetstream.APIError{ErrorCode: 10005, Description: "no suitable peers for placement"}, true},
		{&jetstream.APIError{ErrorCode: 10023, Description: "insufficient resources"}, true},
		{&jetstream.APIError{ErrorCode: 10074, Description: "replicas > 1 not supported in non-clustered mode"}, true},
		{&jetstream.APIError{ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}, false},
		{context.DeadlineExceeded, false},
		{jetstream.ErrBucketExists, false},
		{errors.New("nats: timeout"), false},
	} {
		if got := natsbus.TooFewPeers(tt.err); got != tt.want {
			t.Errorf("TooFewPeers(%v) = %t, want %t", tt.err, got, tt.want)
		}
	}
}
