package farm_test

import (
	"context"
	"crypto/tls"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// laggardBus is a Redis transport whose subscription hands nothing to the
// node while stalled: a node whose reader falls behind (CPU-starved,
// paused), so that what the farm publishes piles up in the socket's
// buffers and then in Redis's output buffer for it.
type laggardBus struct {
	*redisbus.Transport
	mu      sync.Mutex
	stalled chan struct{} // closed by unstall; nil when not stalled
}

func (s *laggardBus) stall() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stalled == nil {
		s.stalled = make(chan struct{})
	}
}

func (s *laggardBus) unstall() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stalled != nil {
		close(s.stalled)
		s.stalled = nil
	}
}

func (s *laggardBus) Subscribe(ctx context.Context, deliver func([]byte), state func(bool, error)) error {
	return s.Transport.Subscribe(ctx, func(msg []byte) {
		s.mu.Lock()
		st := s.stalled
		s.mu.Unlock()
		if st != nil {
			select {
			case <-st:
			case <-ctx.Done():
			}
		}
		deliver(msg)
	}, state)
}

// laggardTransport opens, for each node, a Redis transport at url wrapped
// in laggardBus, as its bus and store.
func laggardTransport(url string) func(testing.TB, string) (transport.Bus, transport.Store) {
	return func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
		tr, err := redisbus.Open(url, farmName)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		s := &laggardBus{Transport: tr}
		return s, s
	}
}

// pubsubClients returns how many pub/sub clients Redis serves, and the
// largest output buffer (omem, bytes) among them.
func pubsubClients(t *testing.T, rc *redis.Client) (n int, omem int64) {
	t.Helper()
	cl, err := rc.Do(context.Background(), "CLIENT", "LIST", "TYPE", "pubsub").Text()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(cl), "\n") {
		if line == "" {
			continue
		}
		n++
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "omem="); ok {
				o, _ := strconv.ParseInt(v, 10, 64)
				omem = max(omem, o)
			}
		}
	}
	return n, omem
}

// TestSlowSubscriberCutOffByRedis: Redis disconnects a pub/sub client
// whose output buffer passes client-output-buffer-limit pubsub (here 256kb
// hard, 128kb for 1s soft), dropping what it held. n3's subscription
// reader stalls (a CPU-starved node), a burst on the farm's channel fills
// the socket's buffers and then Redis's, and meanwhile n1 cuts a session
// to its grace (a resumption) and revokes another: the messages that
// tell the peers are in n3's output buffer when Redis drops it. n3 does
// not know until its reader drains the kernel's buffers and reads the
// end of the connection. Then it must take the disconnect for a gap: come
// back, check its cache against the store, and read the revocations
// again — so that past the grace neither session resumes on n3 (nor on
// n2, which heard both), while a control session still does.
func TestSlowSubscriberCutOffByRedis(t *testing.T) {
	t.Parallel()
	const grace = time.Second
	srv := redistest.StartWith(t, "--client-output-buffer-limit", "pubsub 256kb 128kb 1")
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { rc.Close() })
	o := &farmtest.Options{NewTransport: laggardTransport(srv.URL()), Mode: farm.Broadcast, WriteThrough: true,
		TweakCache: func(c *session.Config) { c.ResumeGrace = grace },
		Tweak: func(c *farm.Config) {
			c.OpTimeout = 300 * time.Millisecond
			c.BreakerCooldown = 500 * time.Millisecond
			c.LookupTimeout = 2 * time.Second // see promiseFarm
		}}
	ms, _ := farmtest.Start(t, 3, o)
	n1, n2, n3 := ms[0], ms[1], ms[2]
	lag := n3.Bus.(*laggardBus)
	ids, cs := farmtest.Issue(t, n1, 3)
	cutID, revID := ids[0], ids[1]
	cutC, revC, ctlC := cs[0], cs[1], cs[2]
	for _, id := range ids {
		waitStored(t, n1, id)
		for _, m := range ms[1:] {
			farmtest.Eventually(t, 5*time.Second, m.Name+" holds n1's sessions", func() bool {
				_, ok := lookup(m.Cache, id)
				return ok
			})
		}
	}
	if n, _ := pubsubClients(t, rc); n != 3 {
		t.Fatalf("%d pub/sub clients, want 3", n)
	}

	// A burst of messages no node accepts (not sealed), 64 KiB each, on
	// the farm's channel: n1 and n2 read and drop them at once.
	junk := []byte(strings.Repeat("x", 64<<10))
	burst := func(until func(n int, omem int64) bool) (sent int, peak int64) {
		t.Helper()
		for sent < 32<<20 {
			for range 4 {
				if err := rc.Publish(context.Background(), lag.Channel(), junk).Err(); err != nil {
					t.Fatal(err)
				}
				sent += len(junk)
			}
			n, omem := pubsubClients(t, rc)
			peak = max(peak, omem)
			if until(n, omem) {
				return sent, peak
			}
		}
		t.Fatalf("published %d MiB and Redis still holds n3's subscription", sent>>20)
		return
	}
	connects := func(m *farmtest.Member) uint64 {
		return farmtest.Counter(m.Node.Metrics(), "tlsfarm_farm_connects_total")
	}
	before := connects(n3)

	lag.stall()
	// Fill the socket's buffers, until Redis has to keep some.
	filled, peak0 := burst(func(n int, omem int64) bool { return omem > 0 })
	// Now cut one session (a resumption on n1) and revoke another.
	if !tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, cutC)).DidResume {
		t.Fatal("the session to be cut did not resume on n1")
	}
	cutBy := time.Now().Add(grace)
	if ok, err := n1.Node.Revoke(context.Background(), revID); !ok || err != nil {
		t.Fatalf("revoke: %v, %v", ok, err)
	}
	farmtest.Eventually(t, 5*time.Second, "n2 heard the cut and the revocation", func() bool {
		r, ok := lookup(n2.Cache, cutID) // gone once past the grace
		_, rev := lookup(n2.Cache, revID)
		return (!ok || time.Until(r.Expires) <= grace) && !rev
	})
	// More, until Redis drops n3's subscription.
	more, peak := burst(func(n int, omem int64) bool { return n < 3 })
	peak = max(peak, peak0)
	dropped := time.Now()
	t.Logf("Redis dropped n3's subscription after %d KiB in the kernel's buffers and %d KiB more (its output buffer at %d KiB at most, as seen)",
		filled>>10, more>>10, peak>>10)
	if !n3.Node.BusUp() {
		t.Fatal("n3's subscription is down while its reader is stalled: the test cannot tell the stall from an outage")
	}
	if _, ok := lookup(n3.Cache, revID); !ok {
		t.Fatal("n3 no longer holds the revoked session before its reader drained: the test proves nothing")
	}

	lag.unstall()
	// As Redis sees it: the promises below are what must hold, whatever
	// n3 made of the drop.
	farmtest.Eventually(t, 10*time.Second, "n3 subscribed again", func() bool {
		n, _ := pubsubClients(t, rc)
		return n == 3
	})
	t.Logf("n3 subscribed again %v after Redis dropped it", time.Since(dropped).Round(time.Millisecond))
	time.Sleep(time.Until(cutBy.Add(300 * time.Millisecond)))
	// Give n3 its reconcile (the dials below fail the test if it did not
	// cut its copy).
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if r, ok := lookup(n3.Cache, cutID); !ok || !r.Expires.After(cutBy.Add(time.Second)) {
			break
		}
	}
	for _, m := range []*farmtest.Member{n3, n2} {
		if tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, cutC)).DidResume {
			farmtest.LogStats(t, ms)
			t.Fatalf("the cut session resumed on %s past its grace", m.Name)
		}
		if tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, revC)).DidResume {
			farmtest.LogStats(t, ms)
			t.Fatalf("the revoked session resumed on %s", m.Name)
		}
	}
	if !tlstest.MustDial(t, n3.Server.Addr, farmtest.Client(tls.VersionTLS13, ctlC)).DidResume {
		farmtest.LogStats(t, ms)
		t.Fatal("the control session did not resume on n3: it dropped its cache, or the test broke resumption")
	}
	if connects(n3) == before {
		t.Fatal("n3 never counted its subscription down")
	}
	s := n3.Node.Metrics()
	t.Logf("n3: reconciles done %d, sessions cut by them %d; re-send requests sent %d",
		farmtest.Counter(s, "tlsfarm_farm_reconciles_total", "result", "done"),
		farmtest.Counter(s, "tlsfarm_farm_reconcile_total", "result", "cut"),
		farmtest.Counter(s, "tlsfarm_farm_lifecycle_resend_total", "event", "request_sent"))
}

// TestResendStormStops: four nodes on a private redis-server that drops a
// pub/sub client past 256kb of output buffer, and n4 a node whose reader
// stalls (as in TestSlowSubscriberCutOffByRedis). n1 to n3 each keep 65,536 retirements and cuts for
// re-sends (a busy node's ring with QueueSize 65536): one re-send of all
// three is some 5 MiB for every subscriber, more than the kernel's
// socket buffers (about 3 to 4 MiB on loopback) and Redis's limit take.
// A burst drops n4 once; it comes back, and its reader stalls again. When it comes back, its
// store still holds the farm's retirements and cuts, and its reconcile
// finds what it missed there: it may ask its peers only for what they
// hold (nothing here), not for all they keep. Before, it asked for all; their re-sends dropped it again, it came back and
// asked again, and so on for as long as it stayed slow (with a reader
// that took 5 ms a message, a drop every 6 s or so: each one a gap, a
// reconcile, and three full re-sends to every node).
func TestResendStormStops(t *testing.T) {
	t.Parallel()
	const ring = 65536
	srv := redistest.StartWith(t, "--client-output-buffer-limit", "pubsub 256kb 128kb 1")
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { rc.Close() })
	o := &farmtest.Options{NewTransport: laggardTransport(srv.URL()), Mode: farm.Broadcast, WriteThrough: true,
		Tweak: func(c *farm.Config) {
			c.OpTimeout = 300 * time.Millisecond
			c.BreakerCooldown = 500 * time.Millisecond
			c.QueueSize = ring
		}}
	ms, _ := farmtest.Start(t, 4, o)
	for _, m := range ms[:3] {
		m.Node.FillSent(ring)
	}
	n4 := ms[3]
	lag := n4.Bus.(*laggardBus)
	metric := func(m *farmtest.Member, name string, labels ...string) uint64 {
		return farmtest.Counter(m.Node.Metrics(), name, labels...)
	}
	connects := func() uint64 { return metric(n4, "tlsfarm_farm_connects_total") }
	resent := func() (sum uint64) {
		for _, m := range ms[:3] {
			sum += metric(m, "tlsfarm_farm_lifecycle_resend_total", "event", "resent")
		}
		return sum
	}

	// Drop n4 once: stall its reader, and publish messages no node
	// accepts until Redis drops it.
	lag.stall()
	junk := []byte(strings.Repeat("x", 64<<10))
	for n := 4; n == 4; n, _ = pubsubClients(t, rc) {
		for range 4 {
			if err := rc.Publish(context.Background(), lag.Channel(), junk).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	before, r0 := connects(), resent()
	lag.unstall()
	farmtest.Eventually(t, 10*time.Second, "n4 subscribed again", func() bool {
		n, _ := pubsubClients(t, rc)
		return n == 4 && connects() > before
	})
	// And n4 is still slow: its reader stalls again (for the rest of the
	// test), so that whatever its peers now send it piles up.
	lag.stall()
	defer lag.unstall()
	back := time.Now()
	farmtest.Eventually(t, 5*time.Second, "n4 reconciled", func() bool {
		return metric(n4, "tlsfarm_farm_reconciles_total", "result", "done") > 0
	})
	// Before, Redis dropped n4 again 1 to 3 s after it came back.
	const watch = 6 * time.Second
	for time.Since(back) < watch {
		if n, _ := pubsubClients(t, rc); n < 4 || connects() > before+1 {
			t.Fatalf("Redis dropped n4 again %v after it came back (its peers re-sent %d items meanwhile, n4 asked %d times)",
				time.Since(back).Round(time.Millisecond), resent()-r0,
				metric(n4, "tlsfarm_farm_lifecycle_resend_total", "event", "request_sent"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := resent() - r0; got != 0 {
		t.Fatalf("n4's peers re-sent %d items after its gap, want none: its store kept what they sent, and they hold nothing", got)
	}
	t.Logf("n4 stayed subscribed for %v after it came back; its peers re-sent nothing", watch)
}

// TestGapAsksForHeld: n1 holds a retirement (kept after a write that
// failed, say: never written nor published) of a session n2 holds, and
// keeps 1,000 retirements and cuts it sent. n2's path to Redis is cut and
// restored: a bus gap, with the store whole. n2's reconcile finds the
// session's record there (n1 never deleted it), so only a re-send can
// tell n2; it asks its peers for what they hold, and n1 re-sends that one
// retirement, not the 1,000 the store already has: n2 drops the session
// and the store loses it. (Asking for nothing after a reconcile that
// vouched for the cache left n2 resuming it; asking for everything
// re-sent all 1,001.)
//
// A reconcile pass that fails asks for everything, as a store that fails
// cannot vouch for the cache (see settleGap): so the pass must not fail
// here. With an OpTimeout of 300 ms it did, on a loaded 2-core machine
// with -race: n2's first read of the records through the proxy took
// longer, and n1 re-sent all 1,001 (TestGapSlowPassAsksForAll shows that
// path); the default OpTimeout (2 s) leaves the read room.
func TestGapAsksForHeld(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	px := nettest.NewProxy(t, srv.Addr())
	nt := redisTransportVia(srv.URL(), 2, px.Addr) // n2 behind px
	ms, _ := farmtest.Start(t, 2, &farmtest.Options{NewTransport: nt, Mode: farm.Broadcast, WriteThrough: true,
		Tweak: func(c *farm.Config) {
			c.BreakerCooldown = 500 * time.Millisecond
		}})
	n1, n2 := ms[0], ms[1]
	ids, cs := farmtest.Issue(t, n1, 1)
	id, c := ids[0], cs[0]
	waitShared(t, ms, farm.Broadcast, id)
	n1.Node.FillSent(1000)
	n1.Node.HoldRetired(id)
	const resend = "tlsfarm_farm_lifecycle_resend_total"
	resent := func() uint64 { return farmtest.Counter(n1.Node.Metrics(), resend, "event", "resent") }
	r0 := resent()

	px.Cut()
	farmtest.Eventually(t, 10*time.Second, "n2 cut off", func() bool { return !n2.Node.BusUp() })
	px.Restore()
	farmtest.WaitConnected(t, n2)
	farmtest.Eventually(t, 10*time.Second, "n2 reconciled", func() bool {
		return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_reconciles_total", "result", "done") > 0
	})
	farmtest.Eventually(t, 5*time.Second, "n2 dropped the session and the store lost it", func() bool {
		_, held := lookup(n2.Cache, id)
		return !held && !stored(n2, id)
	})
	if tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
		t.Fatal("the retired session resumed on n2")
	}
	if got := resent() - r0; got != 1 {
		// What asks for everything: a pass of n2's that failed, or a
		// gap of n1's own (a loss its tallies found).
		t.Fatalf("n1 re-sent %d items, want 1 (what it holds); n2's failed reconcile passes: %d, n1's tally losses: %d, n1's reconciles: %d",
			got, farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_reconciles_total", "result", "failed"),
			farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_tallies_total", "event", "loss"),
			farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_reconciles_total", "result", "done"))
	}
}

// TestGapSlowPassAsksForAll is TestGapAsksForHeld with n2's path to Redis
// slow when it comes back (200 ms each way, with an OpTimeout of 300 ms):
// its first reconcile pass fails, so it cannot vouch for the cache and asks
// its peers for everything, and n1 re-sends all 1,001 items, as the older
// TestGapAsksForHeld saw on a loaded machine. Once the path is fast again,
// the next pass vouches for the cache.
func TestGapSlowPassAsksForAll(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	px := nettest.NewProxy(t, srv.Addr())
	nt := redisTransportVia(srv.URL(), 2, px.Addr) // n2 behind px
	ms, _ := farmtest.Start(t, 2, &farmtest.Options{NewTransport: nt, Mode: farm.Broadcast, WriteThrough: true,
		Tweak: func(c *farm.Config) {
			c.OpTimeout = 300 * time.Millisecond
			c.BreakerCooldown = 500 * time.Millisecond
		}})
	n1, n2 := ms[0], ms[1]
	ids, _ := farmtest.Issue(t, n1, 1)
	waitShared(t, ms, farm.Broadcast, ids[0])
	n1.Node.FillSent(1000)
	n1.Node.HoldRetired(ids[0])
	resent := func() uint64 {
		return farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_lifecycle_resend_total", "event", "resent")
	}
	passes := func(result string) uint64 {
		return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_reconciles_total", "result", result)
	}
	r0 := resent()

	px.Cut()
	farmtest.Eventually(t, 10*time.Second, "n2 cut off", func() bool { return !n2.Node.BusUp() })
	px.SetLatency(200 * time.Millisecond)
	px.Restore()
	farmtest.Eventually(t, 20*time.Second, "n2's pass failed", func() bool { return passes("failed") > 0 })
	px.SetLatency(0)
	farmtest.Eventually(t, 10*time.Second, "n2 reconciled", func() bool { return passes("done") > 0 })
	farmtest.Eventually(t, 5*time.Second, "n1 re-sent everything", func() bool { return resent()-r0 >= 1001 })
}
