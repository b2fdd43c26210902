package farm_test

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
)

// slowWrites is a Redis transport whose every write (publish, store write,
// or both in one round trip) takes delay longer, as over a slow link; a
// write whose context ends first fails, as a real one in flight would.
type slowWrites struct {
	*redisbus.Transport
	delay time.Duration
}

func (s *slowWrites) wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(s.delay):
		return nil
	}
}

func (s *slowWrites) Publish(ctx context.Context, msgs ...[]byte) error {
	if err := s.wait(ctx); err != nil {
		return err
	}
	return s.Transport.Publish(ctx, msgs...)
}

func (s *slowWrites) PutRecords(ctx context.Context, items ...transport.Item) error {
	if err := s.wait(ctx); err != nil {
		return err
	}
	return s.Transport.PutRecords(ctx, items...)
}

func (s *slowWrites) PutAndPublish(ctx context.Context, items []transport.Item, dels []string, msgs [][]byte) error {
	if err := s.wait(ctx); err != nil {
		return err
	}
	return s.Transport.PutAndPublish(ctx, items, dels, msgs)
}

// slowTransport is redisTransport with every write delayed by delay.
func slowTransport(url string, delay time.Duration) func(testing.TB, string) (transport.Bus, transport.Store) {
	return func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
		tr, err := redisbus.Open(url, farmName)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		s := &slowWrites{Transport: tr, delay: delay}
		return s, s
	}
}

// TestCloseFlushesQueue issues sessions on a node whose writes each take
// 80 ms, and closes it right after the last handshake, while some are
// still queued and a batch is being written: every one of them is in the
// store afterwards and, in broadcast mode, in the peer's cache.
func TestCloseFlushesQueue(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			name := farmtest.FarmName(t)
			secret := farm.NewSecret(1)
			n1 := farmtest.Join(t, "n1", name, farmtest.Options{
				NewTransport: slowTransport(url, 80*time.Millisecond), Mode: mode, Secret: secret})
			n2 := farmtest.Join(t, "n2", name, farmtest.Options{
				NewTransport: redisTransport(url), Mode: mode, Secret: secret})
			farmtest.WaitConnected(t, n1, n2)
			ids := newSessions(n1.Cache)

			const sessions = 40
			for range sessions {
				tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, &tlstest.FrozenCache{}))
			}
			n1.Node.Close()
			issued := ids()
			if len(issued) < sessions {
				t.Fatalf("%d sessions issued, want at least %d", len(issued), sessions)
			}

			if mode == farm.Broadcast {
				// Published before Close returned: n2 hears them
				// shortly after.
				notHeard := 0
				for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(20 * time.Millisecond) {
					notHeard = 0
					for _, id := range issued {
						if _, ok := n2.Cache.Get(id); !ok {
							notHeard++
						}
					}
					if notHeard == 0 || time.Now().After(deadline) {
						break
					}
				}
				if notHeard > 0 {
					t.Errorf("%d of %d sessions issued before Close did not reach the peer", notHeard, len(issued))
				}
			}
			missing := 0
			for _, id := range issued {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				if !n2.Node.LoadFromStore(ctx, id) {
					missing++
				}
				cancel()
			}
			if missing > 0 {
				t.Errorf("%d of %d sessions issued before Close are not in the store", missing, len(issued))
			}
		})
	}
}
