package farm_test

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestLookupTimeoutCountedByCause pauses the store while a handshake looks a
// session up: the handshake gives up at its deadline (counted as such), and
// when the store answers later, the answer is counted as late and its
// latency recorded, so that an operator can see how far to move the
// deadline.
func TestLookupTimeoutCountedByCause(t *testing.T) {
	srv := redistest.Start(t)
	tr, err := redisbus.Open(srv.URL(), "lookup-causes")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	cache, err := session.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cache.Close() })
	node, err := farm.Join(context.Background(), farm.Config{
		Farm: "lookup-causes", Secrets: []farm.Secret{farm.NewSecret(1)}, Cache: cache, Bus: tr, Store: tr,
		LookupTimeout: 30 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	farmtest.Eventually(t, 10*time.Second, "node subscribed", func() bool { return node.Connected() })
	// A store lookup only once it knows the farm's revocations.
	farmtest.Eventually(t, 10*time.Second, "the farm's revocations read", node.RevocationsKnown)

	// A store that answers in time: no give-up, no late answer.
	id := cache.NewID()
	if ss, _ := unwrapSession(cache, id[:], tls.ConnectionState{ServerName: "localhost"}); ss != nil {
		t.Fatal("resumed a session nobody issued")
	}
	st := node.Metrics()
	deadline := func() uint64 {
		return farmtest.Counter(st, "tlsfarm_farm_lookups_abandoned_total", "cause", "deadline")
	}
	canceled := func() uint64 {
		return farmtest.Counter(st, "tlsfarm_farm_lookups_abandoned_total", "cause", "canceled")
	}
	late := func() uint64 { return farmtest.Counter(st, "tlsfarm_farm_lookups_late_total") }
	misses := func() uint64 { return farmtest.Counter(st, "tlsfarm_farm_store_lookups_total", "result", "miss") }
	if farmtest.Counter(st, "tlsfarm_farm_lookups_total") != 1 || misses() != 1 || deadline() != 0 || late() != 0 ||
		histogram(st, "tlsfarm_farm_lookup_seconds").Count != 1 {
		t.Fatalf("after a prompt miss: %+v", st)
	}

	srv.Pause()
	start := time.Now()
	id = cache.NewID()
	unwrapSession(cache, id[:], tls.ConnectionState{ServerName: "localhost"})
	if waited := time.Since(start); waited > time.Second {
		t.Fatalf("the handshake waited %v with a 30ms lookup deadline", waited)
	}
	if st = node.Metrics(); deadline() != 1 || canceled() != 0 || late() != 0 {
		t.Fatalf("while the store is paused: deadline %d, canceled %d, late %d; want 1, 0, 0", deadline(), canceled(), late())
	}
	time.Sleep(150 * time.Millisecond)
	srv.Resume()
	farmtest.Eventually(t, 5*time.Second, "the late answer counted", func() bool { return farmtest.Counter(node.Metrics(), "tlsfarm_farm_lookups_late_total") == 1 })
	st = node.Metrics()
	lat := histogram(st, "tlsfarm_farm_lookup_seconds")
	if lat.Count != 2 || misses() != 2 {
		t.Fatalf("latency observations %d, misses %d; want 2 and 2", lat.Count, misses())
	}
	// The late answer took at least the pause: it is in a bucket above 100ms.
	above := lat.Count
	for _, b := range lat.Buckets {
		if b.UpperBound <= 0.1 {
			above = lat.Count - b.Count // the buckets are cumulative
		}
	}
	if above != 1 {
		t.Fatalf("late answer not recorded above 100ms: %v", lat.Buckets)
	}
}

// TestSlowStoreDoesNotOpenBreaker: a store that answers every lookup, but
// after the deadline, costs each handshake its deadline and counts late
// answers; it does not open the breaker, which would stop all lookups (and
// write-through waits) although the store works.
func TestSlowStoreDoesNotOpenBreaker(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	slow := &slowStore{delay: 80 * time.Millisecond}
	o := farmtest.Options{Mode: farm.StoreOnly, Tweak: func(c *farm.Config) { c.LookupTimeout = 20 * time.Millisecond }}
	o.NewTransport = func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
		bus, store := redisTransport(url)(t, farmName)
		slow.Store = store
		return bus, slow
	}
	ms, _ := farmtest.Start(t, 1, &o)
	n := ms[0]
	const lookups = 8
	// A handshake whose goroutine is not run again until the store's late
	// answer is in finds both its deadline and the answer ready, and may
	// take the answer (a CI run at load 11 counted 7 deadlines of 8): such
	// a wait, as long as the store's delay, is not held to the deadline.
	overslept := 0
	for i := range lookups {
		id := n.Cache.NewID()
		start := time.Now()
		unwrapSession(n.Cache, id[:], tls.ConnectionState{ServerName: "localhost"})
		if time.Since(start) >= slow.delay {
			overslept++
		}
		// Each late answer before the next lookup: a loaded machine
		// delays the answers, and five give-ups before the first of
		// them came would trip the breaker however they are counted.
		farmtest.Eventually(t, 5*time.Second, "the late answer counted", func() bool {
			return farmtest.Counter(n.Node.Metrics(), "tlsfarm_farm_lookups_late_total") == uint64(i+1)
		})
	}
	farmtest.Eventually(t, 5*time.Second, "every late answer counted", func() bool { return farmtest.Counter(n.Node.Metrics(), "tlsfarm_farm_lookups_late_total") == lookups })
	st := n.Node.Metrics()
	deadline := farmtest.Counter(st, "tlsfarm_farm_lookups_abandoned_total", "cause", "deadline")
	skipped := farmtest.Counter(st, "tlsfarm_farm_store_lookups_total", "result", "skipped")
	trips := farmtest.Counter(st, "tlsfarm_farm_breaker_trips_total")
	open := farmtest.Counter(st, "tlsfarm_farm_breaker_open") == 1
	if deadline > lookups || deadline < uint64(lookups-overslept) || skipped != 0 || trips != 0 || open {
		t.Fatalf("deadline %d, skipped %d, breaker trips %d (open %t); want %d (%d waits as long as the store's delay), 0, 0", deadline, skipped, trips, open, lookups, overslept)
	}
}

// unwrapSession offers identity to the cache as a handshake on a config
// without GetConfigForClient would (session.Cache.Install sets its
// UnwrapSession).
func unwrapSession(c *session.Cache, identity []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
	cfg := &tls.Config{}
	c.Install(cfg)
	return cfg.UnwrapSession(identity, cs)
}

// lookup returns the record of the session id as the cache holds it, after
// asking for it as GetBuffer does.
func lookup(c *session.Cache, id session.ID) (session.Record, bool) {
	if _, ok := c.GetBuffer(id, nil); !ok {
		return session.Record{}, false
	}
	for got, r := range c.Snapshot(-1) {
		if got == id {
			return r, true
		}
	}
	return session.Record{}, false
}
