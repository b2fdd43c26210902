package farm_test

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestResendHeldOnRequest: a retirement that n1 holds (kept after a write
// that failed, say) but that neither the store nor n2 ever saw is written
// and published again when n2 asks the farm to re-send (msgResend): the
// store loses the session, n2 retires its whole copy, and the session
// resumes nowhere. Requests are rate-limited to one a second: five asked
// at once do not go out as five. Both modes, Redis as
// bus and store.
func TestResendHeldOnRequest(t *testing.T) {
	t.Parallel()
	for _, mode := range []farm.Mode{farm.Broadcast, farm.StoreOnly} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			ms, _ := farmtest.Start(t, 2, &farmtest.Options{NewTransport: redisTransport(redistest.URL(t)), Mode: mode, WriteThrough: true})
			farmtest.WaitConnected(t, ms...)
			n1, n2 := ms[0], ms[1]
			ids := farmtest.HandshakeSessions(n1.Cache)
			c := &tlstest.FrozenCache{}
			tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, c))
			id := ids()[0]
			waitStored(t, n1, id)
			if mode == farm.StoreOnly {
				copyToPeer(t, n1, n2, id)
			}
			waitHeld(t, n2, id)

			n1.Node.HoldRetired(id)
			const resend = "tlsfarm_farm_lifecycle_resend_total"
			// The node's own requests (its subscription coming up after
			// it had been reported down) may still be waiting out the
			// rate limit: let it pass before the baseline is read. The
			// first of these asks may still go out with the rest, if a
			// request went out within the second. A subscription that
			// comes back meanwhile (the machine under load) asks once
			// more.
			time.Sleep(1200 * time.Millisecond)
			before := farmtest.Counter(n2.Node.Metrics(), resend, "event", "request_sent")
			const connects = "tlsfarm_farm_connects_total"
			ups := farmtest.Counter(n2.Node.Metrics(), connects)
			asked := time.Now()
			for range 5 {
				n2.Node.AskResend()
			}
			key := "s:" + hex.EncodeToString(id[:])
			farmtest.Eventually(t, 5*time.Second, "n1 re-sent the retirement: the store and n2 lost the session", func() bool {
				_, err := n2.Store.GetRecord(context.Background(), key)
				_, held := lookup(n2.Cache, id)
				return err != nil && !held
			})
			if got := farmtest.Counter(n1.Node.Metrics(), resend, "event", "request_received"); got == 0 {
				t.Fatal("n1 counted no request received")
			}
			if got := farmtest.Counter(n1.Node.Metrics(), resend, "event", "resent"); got == 0 {
				t.Fatal("n1 counted nothing re-sent")
			}
			for _, m := range ms {
				if tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
					t.Fatalf("the retired session resumed on %s", m.Name)
				}
			}
			time.Sleep(2500 * time.Millisecond)
			again := farmtest.Counter(n2.Node.Metrics(), connects) - ups
			// One request a second at most: the first at once, then
			// one for whatever asks came while the limit held. Under
			// load the five asks may straddle a request, so up to one
			// more per second elapsed; unlimited, all five would go.
			got := farmtest.Counter(n2.Node.Metrics(), resend, "event", "request_sent") - before
			limit := 1 + uint64(time.Since(asked)/time.Second) + again
			if got < 1 || got > limit || got >= 5 {
				t.Fatalf("n2 sent %v requests for 5 asks in %v (its subscription came back %v times meanwhile; %v sent before), want 1 to %v (rate-limited)",
					got, time.Since(asked).Round(time.Millisecond), again, before, limit)
			}
		})
	}
}

// deafGate is a Redis transport (bus and store) that, while deaf is set,
// drops what its subscription delivers (the node misses the messages, as
// one not subscribed when they went out would), and, while gated is set,
// fails reads of the store's generation record (the node cannot tell yet
// that the store lost its data, so it does not write back).
type deafGate struct {
	*redisbus.Transport
	deaf, gated atomic.Bool
}

var errGated = errors.New("generation reads held off (test)")

func (d *deafGate) Subscribe(ctx context.Context, deliver func([]byte), state func(bool, error)) error {
	return d.Transport.Subscribe(ctx, func(msg []byte) {
		if !d.deaf.Load() {
			deliver(msg)
		}
	}, state)
}

func (d *deafGate) GetRecord(ctx context.Context, key string) ([]byte, error) {
	if key == "generation" && d.gated.Load() {
		return nil, errGated
	}
	return d.Transport.GetRecord(ctx, key)
}

// deafGateTransport opens, for each node, a Redis transport at url
// wrapped in deafGate, as its bus and store.
func deafGateTransport(url string) func(testing.TB, string) (transport.Bus, transport.Store) {
	return func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
		tr, err := redisbus.Open(url, farmName)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		d := &deafGate{Transport: tr}
		return d, d
	}
}

// writeBackFarm is the farm of the write-back tests: two nodes on a
// private redis-server (no persistence: a restart is empty), each on a
// deafGate, with the short timeouts of the outage tests and HealInterval
// 250 ms (n2's generation check, once no longer held off).
type writeBackFarm struct {
	ms   []*farmtest.Member
	name string
	o    *farmtest.Options
	srv  *redistest.Server
	g    *deafGate // n2's
	rc   *redis.Client
}

// startWriteBackFarm starts a writeBackFarm in mode, its sessions' grace
// grace.
func startWriteBackFarm(t *testing.T, mode farm.Mode, grace time.Duration) *writeBackFarm {
	t.Helper()
	srv := redistest.Start(t)
	o := &farmtest.Options{Mode: mode, WriteThrough: true,
		NewTransport: deafGateTransport(srv.URL()),
		TweakCache:   func(c *session.Config) { c.ResumeGrace = grace },
		Tweak: func(c *farm.Config) {
			c.OpTimeout = 300 * time.Millisecond
			c.BreakerCooldown = 500 * time.Millisecond
			c.HealInterval = 250 * time.Millisecond
		}}
	ms, name := farmtest.Start(t, 2, o)
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { rc.Close() })
	return &writeBackFarm{ms: ms, name: name, o: o, srv: srv, g: ms[1].Store.(*deafGate), rc: rc}
}

// pttl returns how long the store keeps id's record (negative: none).
func (w *writeBackFarm) pttl(id session.ID) (time.Duration, error) {
	return w.rc.PTTL(context.Background(), w.g.RecordKey("s:"+hex.EncodeToString(id[:]))).Result()
}

// TestWriteBackWaitsForResend: n1 holds a retirement of one session and a
// grace cut of another (kept after a failed write, say; never written nor
// published), and n2, which holds both whole, never heard of them. The
// store restarts empty. n2 misses what n1 re-sends when the subscriptions
// come back and when n2 asks once more (it is deaf to the bus), and cannot
// tell yet that the store lost its data (its generation reads are held
// off); then it hears again, finds the generation changed and writes back
// what it holds, n1's re-sends being rate-limited for most of a second
// still. n2 must ask n1 to re-send, and wait for it, before it reads its
// cache: from before its write-back until well after it, the store never
// holds the retired session, nor the parent whole (only cut, if at all);
// a control session n2 made is written back; and n2 no longer holds the
// retired session nor resumes it, and holds the parent cut. Before
// writeBack asked first, n2 wrote both back whole, and the store held
// them until n1 answered the request that followed. Redis as bus and
// store, both modes.
func TestWriteBackWaitsForResend(t *testing.T) {
	t.Parallel()
	const grace = 30 * time.Second
	for _, mode := range []farm.Mode{farm.Broadcast, farm.StoreOnly} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			wf := startWriteBackFarm(t, mode, grace)
			ms, srv, g := wf.ms, wf.srv, wf.g
			n1, n2 := ms[0], ms[1]
			dial := func(m *farmtest.Member, c *tlstest.FrozenCache) bool {
				return tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume
			}
			// stored reports whether the store holds id, and for how long.
			stored := func(id session.ID) (time.Duration, bool) {
				ttl, err := wf.pttl(id)
				if err != nil {
					t.Errorf("reading the store: %v", err)
					return 0, false
				}
				return ttl, ttl >= 0
			}

			ids, cs := farmtest.Issue(t, n1, 2)
			retired, parent, retiredC := ids[0], ids[1], cs[0]
			ids, cs = farmtest.Issue(t, n2, 1)
			control, controlC := ids[0], cs[0]
			for _, id := range []session.ID{retired, parent, control} {
				waitStored(t, n1, id)
			}
			if mode == farm.StoreOnly {
				copyToPeer(t, n1, n2, retired, parent)
			}
			cutUntil := time.Now().Add(grace)
			// whole reports whether n2 holds id past the cut.
			whole := func(id session.ID) bool {
				rec, ok := lookup(n2.Cache, id)
				return ok && rec.Expires.After(cutUntil.Add(time.Second))
			}
			farmtest.Eventually(t, 5*time.Second, "n2 holds both sessions whole and knows the store's generation", func() bool {
				return whole(retired) && whole(parent) && n2.Node.StoreGeneration() != nil
			})

			n1.Node.HoldRetired(retired)
			n1.Node.HoldCut(parent, cutUntil)
			g.deaf.Store(true)
			g.gated.Store(true)
			srv.Kill()
			srv.Restart()
			farmtest.WaitConnected(t, n1, n2)
			const wb = "tlsfarm_farm_written_back_total"
			farmtest.Eventually(t, 10*time.Second, "n1 wrote back what it holds", func() bool {
				return farmtest.Counter(n1.Node.Metrics(), wb) > 0
			})
			// The requests and re-sends of the reconnects and of n1's
			// write-back are over (each at most once a second), n2
			// having heard none of them.
			time.Sleep(2500 * time.Millisecond)
			// n2 asks again (deaf still) and n1 re-sends at once: n1's
			// next re-send, and n2's next request through its rate
			// limit, wait for the rest of their second.
			const resend = "tlsfarm_farm_lifecycle_resend_total"
			resent := farmtest.Counter(n1.Node.Metrics(), resend, "event", "resent")
			n2.Node.AskResend()
			farmtest.Eventually(t, 5*time.Second, "n1 re-sent what it holds", func() bool {
				return farmtest.Counter(n1.Node.Metrics(), resend, "event", "resent") > resent
			})
			time.Sleep(200 * time.Millisecond) // its messages reach n2, deaf
			if !whole(retired) || !whole(parent) {
				t.Fatal("n2 no longer holds both sessions whole before its write-back: the test proves nothing")
			}
			if farmtest.Counter(n2.Node.Metrics(), wb) != 0 {
				t.Fatal("n2 wrote back while its generation reads were held off")
			}

			// Watch the store from before n2's write-back until well
			// after it.
			var (
				mu          sync.Mutex
				polls, bad  int
				what        = map[string]bool{}
				first, last time.Time
			)
			stop := make(chan struct{})
			done := make(chan struct{})
			go func() {
				defer close(done)
				for {
					select {
					case <-stop:
						return
					default:
					}
					var found []string
					if _, ok := stored(retired); ok {
						found = append(found, "the retired session")
					}
					if ttl, ok := stored(parent); ok && ttl > time.Until(cutUntil)+time.Second {
						found = append(found, "the parent whole")
					}
					mu.Lock()
					polls++
					if len(found) > 0 {
						if bad == 0 {
							first = time.Now()
						}
						bad++
						last = time.Now()
						for _, f := range found {
							what[f] = true
						}
					}
					mu.Unlock()
					time.Sleep(2 * time.Millisecond)
				}
			}()
			g.deaf.Store(false)
			g.gated.Store(false)
			released := time.Now()
			farmtest.Eventually(t, 10*time.Second, "n2 wrote back what it holds", func() bool {
				return farmtest.Counter(n2.Node.Metrics(), wb) > 0
			})
			t.Logf("n2 wrote back %v after its generation reads resumed", time.Since(released).Round(time.Millisecond))
			time.Sleep(3 * time.Second) // and the request that follows the write-back, answered
			close(stop)
			<-done
			mu.Lock()
			t.Logf("%d polls of the store", polls)
			if bad > 0 {
				t.Fatalf("the store held %v in %d of %d polls, for %v from %v after n2's generation reads resumed",
					slices.Sorted(maps.Keys(what)), bad, polls, last.Sub(first).Round(time.Millisecond), first.Sub(released).Round(time.Millisecond))
			}
			mu.Unlock()
			if _, ok := stored(control); !ok {
				t.Fatal("n2's control session was not written back")
			}
			if _, ok := lookup(n2.Cache, retired); ok {
				t.Fatal("n2 still holds the retired session")
			}
			if _, ok := lookup(n2.Cache, parent); !ok || whole(parent) {
				t.Fatal("n2 does not hold the parent cut")
			}
			if dial(n2, retiredC) {
				t.Fatal("the retired session resumed on n2")
			}
			if !dial(n2, controlC) {
				t.Fatal("the control session did not resume on n2")
			}
		})
	}
}

// TestCloseDuringWriteBackWait: a node that found the store's generation
// record changed asks its peers to re-send and waits before it writes its
// sessions back; a Close meanwhile ends the wait at once, and the node
// writes nothing back (its sessions stay local).
func TestCloseDuringWriteBackWait(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	o := &farmtest.Options{NewTransport: deafGateTransport(srv.URL()), WriteThrough: true,
		Tweak: func(c *farm.Config) { c.HealInterval = 100 * time.Millisecond }}
	ms, _ := farmtest.Start(t, 1, o)
	n1 := ms[0]
	g := n1.Store.(*deafGate)
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rc.Close()
	ids := farmtest.HandshakeSessions(n1.Cache)
	tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, &tlstest.FrozenCache{}))
	waitStored(t, n1, ids()[0])
	farmtest.Eventually(t, 5*time.Second, "n1 knows the store's generation", func() bool {
		return n1.Node.StoreGeneration() != nil
	})

	const resend = "tlsfarm_farm_lifecycle_resend_total"
	asked := farmtest.Counter(n1.Node.Metrics(), resend, "event", "request_sent")
	if err := rc.Del(context.Background(), g.RecordKey("generation")).Err(); err != nil {
		t.Fatal(err)
	}
	farmtest.Eventually(t, 5*time.Second, "n1 asked its peers to re-send before writing back", func() bool {
		return farmtest.Counter(n1.Node.Metrics(), resend, "event", "request_sent") > asked
	})
	start := time.Now()
	n1.Node.Close()
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Close took %v while the write-back waited", d)
	} else {
		t.Logf("Close took %v while the write-back waited", d)
	}
	if got := farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_written_back_total"); got != 0 {
		t.Fatalf("n1 wrote back %v sessions: it did not wait after asking, or did not stop at Close", got)
	}
}

// TestResentCutLeavesDeletedRecordGone: n2 resumes a session that n1
// issued, which cuts the session's record in the store to its grace and
// keeps the cut to re-send. The record is then deleted from the store, as
// a retirement that n2 missed (made while its path was cut, say) deletes
// it. When n1 asks the farm to re-send, n2 writes its cut again, and the
// record must stay gone: a cut shortens a record that is there and never
// writes one back, which would let every node that loads it resume the
// retired session. Both modes, Redis as bus and store.
func TestResentCutLeavesDeletedRecordGone(t *testing.T) {
	t.Parallel()
	for _, mode := range []farm.Mode{farm.Broadcast, farm.StoreOnly} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			url := redistest.URL(t)
			ms, _ := farmtest.Start(t, 2, &farmtest.Options{NewTransport: redisTransport(url), Mode: mode, WriteThrough: true})
			farmtest.WaitConnected(t, ms...)
			n1, n2 := ms[0], ms[1]
			ids := farmtest.HandshakeSessions(n1.Cache)
			c := &tlstest.FrozenCache{}
			tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, c))
			id := ids()[0]
			waitStored(t, n1, id)
			if !tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
				t.Fatal("the session did not resume on n2")
			}
			opts, err := redis.ParseURL(url)
			if err != nil {
				t.Fatal(err)
			}
			rc := redis.NewClient(opts)
			defer rc.Close()
			key := "s:" + hex.EncodeToString(id[:])
			full := n2.Store.(*redisbus.Transport).RecordKey(key)
			farmtest.Eventually(t, 5*time.Second, "n2's cut reached the store", func() bool {
				ttl, err := rc.PTTL(context.Background(), full).Result()
				return err == nil && ttl > 0 && ttl <= time.Minute
			})

			if err := n1.Store.DeleteRecords(context.Background(), key); err != nil {
				t.Fatal(err)
			}
			const resend = "tlsfarm_farm_lifecycle_resend_total"
			const writes = "tlsfarm_farm_store_writes_total"
			// Past the rate limit of requests the nodes' own
			// subscriptions coming up may have used.
			time.Sleep(1200 * time.Millisecond)
			resent := farmtest.Counter(n2.Node.Metrics(), resend, "event", "resent")
			written := farmtest.Counter(n2.Node.Metrics(), writes)
			n1.Node.AskResend()
			farmtest.Eventually(t, 5*time.Second, "n2 re-sent its cut and wrote it", func() bool {
				return farmtest.Counter(n2.Node.Metrics(), resend, "event", "resent") > resent &&
					farmtest.Counter(n2.Node.Metrics(), writes) > written
			})
			for range 10 {
				if v, err := n1.Store.GetRecord(context.Background(), key); !errors.Is(err, transport.ErrNotFound) {
					t.Fatalf("the deleted record is back in the store after n2 re-sent its cut (%d bytes, %v)", len(v), err)
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
}
