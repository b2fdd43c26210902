package redisbus_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// TestWriteCutInFlightNotSentAgain: a write whose connection is cut while
// Redis has not had it (the proxy holds its bytes) fails, and is not sent
// again on a new connection once Redis can be reached: go-redis's own
// retries would send it after the farm has moved on. A session's first
// write so re-sent after its issuer came back, and had heard the session
// cut past its grace, put it in the store whole until the issuer deleted
// it again, for any node that loaded it meanwhile to resume
// (TestCarriedGraceCutThroughStoreLoss/cut-past-grace). One write, a
// pipeline of several, and PutAndPublish's one round trip.
func TestWriteCutInFlightNotSentAgain(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	// Each writes the records p+"a" (and p+"b").
	cases := map[string]func(ctx context.Context, tr *redisbus.Transport, p string) error{
		"set": func(ctx context.Context, tr *redisbus.Transport, p string) error {
			return tr.PutRecords(ctx, transport.Item{Key: p + "a", Value: []byte("1"), TTL: time.Hour})
		},
		"pipeline": func(ctx context.Context, tr *redisbus.Transport, p string) error {
			return tr.PutRecords(ctx, transport.Item{Key: p + "a", Value: []byte("1"), TTL: time.Hour},
				transport.Item{Key: p + "b", Value: []byte("2"), TTL: time.Hour})
		},
		"put-and-publish": func(ctx context.Context, tr *redisbus.Transport, p string) error {
			return tr.PutAndPublish(ctx, []transport.Item{{Key: p + "a", Value: []byte("1"), TTL: time.Hour}}, nil, [][]byte{[]byte("m")})
		},
	}
	for name, write := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			farm := redistest.Farm(t)
			px := nettest.NewProxy(t, srv.Addr())
			tr := open(t, "redis://"+px.Addr, farm)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			// The connection the write takes is in the pool, as a
			// node's is: what the proxy holds is the write, not the
			// setup of a new connection.
			if err := write(ctx, tr, "warm-"); err != nil {
				t.Fatal(err)
			}
			px.Freeze()
			done := make(chan error, 1)
			go func() { done <- write(ctx, tr, "cut-") }()
			farmtest.Eventually(t, 10*time.Second, "the write held in the proxy", func() bool { return px.Holding() > 0 })
			px.Cut()
			px.Restore()
			err := <-done
			if err == nil {
				t.Error("the write cut in flight succeeded: it was sent again on a new connection")
			}
			peer := open(t, srv.URL(), farm)
			for _, key := range []string{"cut-a", "cut-b"} {
				if _, err := peer.GetRecord(ctx, key); !errors.Is(err, transport.ErrNotFound) {
					t.Errorf("record %q written (GetRecord: %v): the write cut in flight was sent again", key, err)
				}
			}
			// The transport works again, on a new connection.
			if err := write(ctx, tr, "after-"); err != nil {
				t.Fatalf("the write after the cut: %v", err)
			}
		})
	}
}
