package farm_test

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
	"github.com/tlsfarm/tlsfarm/ticket"
)

// TestFreshRingAgesStoredKeySet: a ring that holds no farm key set yet
// takes the stored one only as the rotations due since it was written
// (one per Interval, by the store's clock) leave it. The farm n1, n2
// rotates, then stops rotating (every rotator closed, as when every node
// goes away), and fresh members n3, n4 join:
//
//   - replayed: the store holds a set captured four rotations back, put
//     there again by someone who can write Redis. Before, n3 took it (and
//     rotated from it) until another node merged; now no key that had
//     rotated out comes back, and the fresh members write a set of their
//     own above it and agree on it.
//   - long pause: the farm's own last set, left for longer than its keys
//     live ((Keep+1) × Interval): the fresh members agree on a new set
//     above it, and a ticket issued by one resumes on the other.
//   - short pause: the farm's own last set, a moment later: it is taken,
//     and a ticket n1 issued before the pause resumes on n3 and n4.
func TestFreshRingAgesStoredKeySet(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	rot := farm.RotationConfig{Interval: time.Second, Keep: 1}
	for _, tc := range []string{"replayed", "long pause", "short pause"} {
		t.Run(tc, func(t *testing.T) {
			t.Parallel()
			o := farmtest.Options{NewTransport: redisTransport(url), SessionMode: session.Stateless, Rotation: &rot}
			ms, name := farmtest.Start(t, 2, &o)
			raw := redis.NewClient(opt)
			defer raw.Close()
			ctx := context.Background()
			key := redisOf(ms[0]).Key("ticket-keys")

			first := agreed(t, ms, 1)
			old, err := raw.Get(ctx, key).Bytes()
			if err != nil {
				t.Fatal(err)
			}
			gone := map[ticket.Key]bool{}
			if tc == "replayed" {
				latest := agreed(t, ms, first.Epoch+4)
				for _, k := range append(first.Keys(), first.Previous...) {
					gone[k] = true
				}
				for _, k := range latest.Keys() {
					delete(gone, k)
				}
				if len(gone) == 0 {
					t.Fatal("no key of the first set has left the farm's set")
				}
			}
			frozen := &tlstest.FrozenCache{}
			tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tls.VersionTLS13, frozen))
			for _, m := range ms {
				m.Rotator.Close()
			}
			stopped := ms[0].Ring.State()
			switch tc {
			case "replayed":
				if err := raw.Set(ctx, key, old, 0).Err(); err != nil {
					t.Fatal(err)
				}
			case "long pause":
				time.Sleep(time.Until(stopped.Rotated.Add(time.Duration(rot.Keep+2) * rot.Interval)))
			}
			before := ms[0].Ring.State().Epoch
			n3 := farmtest.Join(t, "n3", name, o)
			n4 := farmtest.Join(t, "n4", name, o)
			fresh := []*farmtest.Member{n3, n4}
			if tc == "short pause" {
				// Right away: the fresh members rotate the farm's set
				// when due, and n1's key lives Keep rotations more.
				for _, m := range fresh {
					if !tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, frozen)).DidResume {
						t.Fatalf("%s did not resume a ticket n1 issued before the pause", m.Name)
					}
				}
				return
			}
			deadline := time.Now().Add(3 * time.Second)
			for time.Now().Before(deadline) {
				for _, m := range fresh {
					for _, k := range m.Ring.State().Keys() {
						if gone[k] {
							t.Fatalf("%s took a key that had rotated out, from a replayed key set (epoch %d)", m.Name, m.Ring.State().Epoch)
						}
					}
				}
				time.Sleep(5 * time.Millisecond)
			}
			st := agreed(t, fresh, before+1)
			for _, k := range stopped.Keys() {
				if k == st.Current {
					t.Fatalf("the fresh members encrypt with a key of the set left %v ago", time.Since(stopped.Rotated))
				}
			}
			f := &tlstest.FrozenCache{}
			tlstest.MustDial(t, n3.Server.Addr, farmtest.Client(tls.VersionTLS13, f))
			if !tlstest.MustDial(t, n4.Server.Addr, farmtest.Client(tls.VersionTLS13, f)).DidResume {
				t.Fatal("n4 did not resume a ticket n3 issued")
			}
		})
	}
}
