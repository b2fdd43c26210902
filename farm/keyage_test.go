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
//   - short pause: the farm's own last set, a moment later (well within
//     the life of n1's key: Keep 10 here): it is taken, and a ticket n1
//     issued before the pause resumes on n3 and n4.
func TestFreshRingAgesStoredKeySet(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []string{"replayed", "long pause", "short pause"} {
		t.Run(tc, func(t *testing.T) {
			t.Parallel()
			rot := farm.RotationConfig{Interval: time.Second, Keep: 1}
			if tc == "short pause" {
				// The pause lasts until the fresh members' first
				// steps, which a loaded machine may hold back for
				// seconds: n1's key must outlive that ((Keep+1) ×
				// Interval), as it does a short pause in a real
				// farm (the default keeps a key for hours), and
				// the stored set is still aged by the rotations
				// due meanwhile.
				rot.Keep = 10
			}
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
			neverTakesGone(t, fresh, gone, 3*time.Second)
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

// TestFreshRingAgesAnnouncementByNow: a ring that holds no farm set yet
// ages an announced key set as of its own clock, not as of the
// announcement's seal. A bus message is taken up to MaxAge (30 s) after
// its seal, and someone who can replay bus messages (no farm secret) can
// resend a genuine announcement that long after: with a short Interval
// its keys have rotated out meanwhile. The farm n1, n2 rotates every
// second with Keep 1; an announcement is captured, and resent once every
// key of its set has left the farm's set, to a fresh member n3 that
// waits for the farm's keys as the daemon does: the store holds only a
// stale set (written back) and the lease is held by someone else, so
// n3 takes nothing from the store. Before, n3 took the announced set
// (aged as of its seal, by nothing) and encrypted with a key that had
// rotated out.
func TestFreshRingAgesAnnouncementByNow(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	rot := farm.RotationConfig{Interval: time.Second, Keep: 1}
	o := farmtest.Options{NewTransport: redisTransport(url), SessionMode: session.Stateless, Rotation: &rot,
		Tweak: func(c *farm.Config) { c.TallyInterval = -1 }}
	ms, name := farmtest.Start(t, 2, &o)
	raw := redis.NewClient(opt)
	defer raw.Close()
	ctx := context.Background()
	setKey := redisOf(ms[0]).Key("ticket-keys")
	leaseKey := redisOf(ms[0]).Key("ticket-keys-lease")
	// Every node publishes on a channel of its own, below the farm's.
	ps := raw.PSubscribe(ctx, redisOf(ms[0]).Channel()+"*")
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	agreed(t, ms, 1)
	var announced []byte
	var channel string
	for announced == nil {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		msg, err := ps.ReceiveMessage(rctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if m := []byte(msg.Payload); len(m) > farm.EnvTypeAt && m[farm.EnvTypeAt] == farm.EnvTypeKeys {
			announced, channel = m, msg.Channel
		}
	}
	// The announced set is the one the farm holds now, or an older one.
	stored, err := raw.Get(ctx, setKey).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	then := ms[0].Ring.State()
	gone := map[ticket.Key]bool{then.Current: true, then.Next: true}
	for _, k := range then.Previous {
		gone[k] = true
	}
	latest := agreed(t, ms, then.Epoch+4)
	for _, k := range latest.Keys() {
		if gone[k] {
			t.Fatalf("key %v of epoch %d still in the farm's set at epoch %d", k, then.Epoch, latest.Epoch)
		}
	}
	for _, m := range ms {
		m.Rotator.Close()
	}
	// The attacker's store: a set whose keys have all rotated out (no
	// fresh ring takes it), and the lease, so that no one writes above it.
	if err := raw.Set(ctx, setKey, stored, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := raw.Set(ctx, leaseKey, "attacker", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	if age := time.Since(then.Rotated); age > 20*time.Second {
		t.Skipf("the announcement is %v old: too close to MaxAge on this machine", age)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			raw.Publish(ctx, channel, announced)
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	n3 := farmtest.Join(t, "n3", name, o) // waits for the farm's keys, up to 5 s
	close(stop)
	<-done
	st := n3.Ring.State()
	for _, k := range st.Keys() {
		if gone[k] {
			t.Fatalf("n3 took a key that had rotated out (epoch %d, ring at epoch %d), from an announcement resent %v after the rotation it announced",
				then.Epoch, st.Epoch, time.Since(then.Rotated).Round(time.Second))
		}
	}
}
