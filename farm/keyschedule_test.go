package farm_test

import (
	"context"
	"crypto/tls"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/logtest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
	"github.com/tlsfarm/tlsfarm/ticket"
)

// TestFreshRingAgesKeySetBySchedule: a fresh ring ages the farm's key set
// by the Interval and Keep of the lease holder that wrote it, not by its
// own. The farm n1, n2 rotates every 6 s keeping 2 previous keys; n1
// issues a ticket, the farm rotates, and 2.2 s later a fresh member n3
// configured with a 1 s Interval (as in a rolling change of the interval,
// or a keys agent with other flags) joins. Before, n3 counted two or more
// rotations due: with Keep 2 it dropped every previous key, with Keep 1 it
// called the farm's set stale and took nothing; either way the ticket
// issued before the rotation did not resume on it. Now n3 takes the
// farm's set whole and the ticket resumes, and warns once that its
// schedule differs from the farm's. By the farm's schedule no rotation is
// due 2.2 s after one; n3 is checked before the next, 3.8 s later (n3's
// Join takes a fraction of a second, or its 2 s wait for keys when it
// takes nothing; a run too slow for that skips).
func TestFreshRingAgesKeySetBySchedule(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	rot := farm.RotationConfig{Interval: 6 * time.Second, Keep: 2}
	for _, tc := range []struct {
		name string
		keep int
	}{
		{name: "shorter interval", keep: 2},
		{name: "shorter interval, smaller keep", keep: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o := farmtest.Options{NewTransport: redisTransport(url), SessionMode: session.Stateless, Rotation: &rot}
			ms, name := farmtest.Start(t, 2, &o)
			first := agreed(t, ms, 1)
			frozen := &tlstest.FrozenCache{}
			tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tls.VersionTLS13, frozen))
			st := agreed(t, ms, first.Epoch+1)
			if !slices.Contains(st.Previous, first.Current) {
				t.Fatalf("the farm's set at epoch %d lacks the key that encrypted at epoch %d", st.Epoch, first.Epoch)
			}
			time.Sleep(time.Until(st.Rotated.Add(2200 * time.Millisecond)))
			short := farm.RotationConfig{Interval: time.Second, Keep: tc.keep}
			var logs logtest.Buffer
			o3 := o
			o3.Rotation = &short
			o3.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			// A ring that takes the farm's set finds it at once; one
			// that calls it stale waits for a newer one: not for long,
			// so that it is checked (and fails) before the farm's next
			// rotation.
			o3.ReadyWait = 2 * time.Second
			n3 := farmtest.Join(t, "n3", name, o3)
			got := n3.Ring.State()
			if now := ms[0].Ring.State(); now.Epoch != st.Epoch {
				t.Skipf("the farm rotated again (epoch %d) before n3 was checked: too slow a machine", now.Epoch)
			}
			if got.Epoch != st.Epoch || got.Current != st.Current || !slices.Equal(got.Previous, st.Previous) {
				t.Fatalf("n3 holds epoch %d with %d previous keys (current the farm's: %v), want the farm's set: epoch %d with %d",
					got.Epoch, len(got.Previous), got.Current == st.Current, st.Epoch, len(st.Previous))
			}
			if !tlstest.MustDial(t, n3.Server.Addr, farmtest.Client(tls.VersionTLS13, frozen)).DidResume {
				t.Fatal("n3 did not resume a ticket n1 issued one rotation back")
			}
			time.Sleep(500 * time.Millisecond) // several polls
			if n := strings.Count(logs.String(), "another rotation interval or keep"); n != 1 {
				t.Fatalf("n3 warned %d times that its schedule differs from the farm's, want once", n)
			}
		})
	}
}

// TestReplayedKeySetAgedByItsSchedule: a key set put back into the store
// is aged by the schedule it was written with, also on a fresh member
// whose own Interval and Keep are far longer. The farm n1, n2 rotates every
// second keeping 1 previous key; the set of four rotations back is put
// back into the store once the farm stops, and a fresh member n3
// configured with a 1 h Interval and Keep 5 joins. Before, n3 aged the set
// by its own hour, found no rotation due and took every key of it, keys
// that had rotated out of the farm's sets included.
func TestReplayedKeySetAgedByItsSchedule(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	rot := farm.RotationConfig{Interval: time.Second, Keep: 1}
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
	latest := agreed(t, ms, first.Epoch+4)
	gone := map[ticket.Key]bool{}
	for _, k := range append(first.Keys(), first.Previous...) {
		gone[k] = true
	}
	for _, k := range append(latest.Keys(), latest.Previous...) {
		delete(gone, k)
	}
	if len(gone) == 0 {
		t.Fatal("no key of the first set has left the farm's set")
	}
	for _, m := range ms {
		m.Rotator.Close()
	}
	if err := raw.Set(ctx, key, old, 0).Err(); err != nil {
		t.Fatal(err)
	}
	long := farm.RotationConfig{Interval: time.Hour, Keep: 5}
	o3 := o
	o3.Rotation = &long
	n3 := farmtest.Join(t, "n3", name, o3)
	neverTakesGone(t, []*farmtest.Member{n3}, gone, 2*time.Second)
}

// neverTakesGone fails the test if, for d, any of ms holds one of the keys
// in gone (keys that rotated out of the farm's sets), as it would after
// taking them from a replayed key set.
func neverTakesGone(t *testing.T, ms []*farmtest.Member, gone map[ticket.Key]bool, d time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		for _, m := range ms {
			st := m.Ring.State()
			for _, k := range st.Keys() {
				if gone[k] {
					t.Fatalf("%s took a key that had rotated out, from a replayed key set (ring at epoch %d)", m.Name, st.Epoch)
				}
			}
		}
	}
}
