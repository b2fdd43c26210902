package farm_test

import (
	"context"
	"crypto/tls"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// pauseWrites holds every write to srv (store writes and publishes alike)
// for d, as a store that is slow to take a session would; reads go on.
func pauseWrites(t *testing.T, srv *redistest.Server, d time.Duration) {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer c.Close()
	if err := c.Do(context.Background(), "CLIENT", "PAUSE", d.Milliseconds(), "WRITE").Err(); err != nil {
		t.Fatal(err)
	}
}

// unpauseWrites ends pauseWrites's hold on srv.
func unpauseWrites(t *testing.T, srv *redistest.Server) {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer c.Close()
	if err := c.Do(context.Background(), "CLIENT", "UNPAUSE").Err(); err != nil {
		t.Fatal(err)
	}
}

// pausedWrites pauses srv's writes for up to ten minutes and returns the
// function that unpauses them, once; it runs at the end of the test if the
// test has not called it.
func pausedWrites(t *testing.T, srv *redistest.Server) (unpause func()) {
	t.Helper()
	pauseWrites(t, srv, 10*time.Minute)
	var once sync.Once
	unpause = func() { once.Do(func() { unpauseWrites(t, srv) }) }
	t.Cleanup(unpause)
	return unpause
}

// youngFarm starts two write-through nodes on a Redis of the test's own;
// tweakA edits the first node's cache configuration.
func youngFarm(t *testing.T, mode farm.Mode, tweak func(*farm.Config), tweakA func(*session.Config)) (*redistest.Server, *farmtest.Member, *farmtest.Member) {
	srv := redistest.Start(t)
	name := redistest.Farm(t)
	o := farmtest.Options{NewTransport: redisTransport(srv.URL()), Mode: mode, WriteThrough: true, Secret: farm.NewSecret(1), Tweak: tweak}
	oa := o
	oa.TweakCache = tweakA
	a := farmtest.Join(t, "n1", name, oa)
	b := farmtest.Join(t, "n2", name, o)
	farmtest.WaitConnected(t, a, b)
	return srv, a, b
}

// TestReaderWaitsForYoungSession: with the store and the bus holding every
// write, the handshake issuing a session does not wait for them, and a
// client reconnecting at once to another node still resumes, because that
// node waits for the young session — for the bus to bring it (broadcast)
// or the store to have it (store-only) — once the writes go through.
//
// The writes are held until the test lets them go, not for a set time:
// an issuing handshake that waited for them would never end while they
// are held (the bounds, WriteThroughTimeout and LookupTimeout, are 30 s),
// so the test need not tell such a wait from a slow machine by the clock.
// Timed against a pause of 600 ms, it failed in a CI run on an issuing
// handshake of 680 ms whose other rounds had waited for nothing.
func TestReaderWaitsForYoungSession(t *testing.T) {
	t.Parallel()
	const (
		// issueBound bounds the issuing handshake while the writes are
		// held; hold is how long they stay held after it, with n2's
		// handshake under way.
		issueBound = 5 * time.Second
		hold       = 600 * time.Millisecond
	)
	for _, mode := range modes {
		for _, tv := range versions {
			t.Run(mode.String()+"/"+tv.name, func(t *testing.T) {
				srv, a, b := youngFarm(t, mode, func(c *farm.Config) {
					c.LookupTimeout, c.WriteThroughTimeout = 30*time.Second, 30*time.Second
				}, nil)
				const rounds = 3
				for i := range rounds {
					ccfg := farmtest.Client(tv.v, &tlstest.SharedCache{})
					unpause := pausedWrites(t, srv)
					start := time.Now()
					if _, err := tlstest.DialWithin(a.Server.Addr, ccfg, issueBound); err != nil {
						t.Fatalf("round %d: the issuing handshake did not end within %v while the store held its writes (did it wait for them?): %v",
							i, issueBound, err)
					}
					issued := time.Since(start)
					type dialed struct {
						cs  tls.ConnectionState
						err error
					}
					done := make(chan dialed, 1)
					start = time.Now()
					go func() {
						cs, err := tlstest.DialWithin(b.Server.Addr, ccfg, 20*time.Second)
						done <- dialed{cs, err}
					}()
					time.Sleep(hold)
					unpause()
					d := <-done
					if d.err != nil {
						t.Fatalf("round %d: a dial to n2: %v", i, d.err)
					}
					if !d.cs.DidResume {
						farmtest.LogStats(t, []*farmtest.Member{a, b})
						t.Fatalf("round %d: the client reconnecting at once to n2 did not resume", i)
					}
					t.Logf("round %d: the issuing handshake took %v; n2 resumed after %v", i, issued, time.Since(start))
				}
				st := b.Node.Metrics()
				want := "arrived"
				if mode == farm.StoreOnly {
					want = "stored"
				}
				if got := farmtest.Counter(st, "tlsfarm_farm_young_waits_total", "result", want); got != rounds {
					farmtest.LogStats(t, []*farmtest.Member{a, b})
					t.Fatalf("young waits %s = %d, want %d", want, got, rounds)
				}
				if got := farmtest.Counter(st, "tlsfarm_farm_young_waits_total", "result", "gave_up"); got != 0 {
					t.Fatalf("young waits gave_up = %d, want 0", got)
				}
			})
		}
	}
}

// TestOldMissingSessionNotWaitedFor: a node presented a session it lacks
// that was issued longer than WriteThroughTimeout ago does not wait for it:
// with the store and the bus holding every write for 2 s, the client gets a
// full handshake at once.
func TestOldMissingSessionNotWaitedFor(t *testing.T) {
	t.Parallel()
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			// n1's clock is 10 s behind: the IDs it mints are old at once.
			srv, a, b := youngFarm(t, mode, func(c *farm.Config) {
				c.LookupTimeout, c.WriteThroughTimeout = 2*time.Second, time.Second
			}, func(c *session.Config) { c.Now = func() time.Time { return time.Now().Add(-10 * time.Second) } })
			const pause = 2 * time.Second
			ccfg := farmtest.Client(tls.VersionTLS13, &tlstest.SharedCache{})
			pauseWrites(t, srv, pause)
			// Once the checks below are done, the rest of the pause
			// holds nothing up but the test's cleanup.
			t.Cleanup(func() { unpauseWrites(t, srv) })
			tlstest.MustDial(t, a.Server.Addr, ccfg)
			start := time.Now()
			if tlstest.MustDial(t, b.Server.Addr, ccfg).DidResume {
				t.Fatal("n2 resumed a session the store could not have yet")
			}
			if took := time.Since(start); took > pause/4 {
				t.Fatalf("n2's handshake took %v: it waited for an old session", took)
			}
			st := b.Node.Metrics()
			for _, r := range []string{"arrived", "stored", "gave_up"} {
				if got := farmtest.Counter(st, "tlsfarm_farm_young_waits_total", "result", r); got != 0 {
					t.Fatalf("young waits %s = %d, want 0", r, got)
				}
			}
		})
	}
}

// TestYoungMissNotRemembered: a young session missing from the store is not
// remembered as missing (the negative cache), since its write may be on its
// way. The store holds every write until the test lets it go, so n2 gives
// up on the young session (its lookup deadline passes first); then n2's
// clock moves past the session's youth, the store takes the write, and the
// same ticket resumes on n2, from the store — not a young wait, and no
// negative-cache hit. Nothing depends on how fast the machine is: the store
// has the session exactly when the test says, and the ID is young to n2
// exactly until the test moves n2's clock.
func TestYoungMissNotRemembered(t *testing.T) {
	t.Parallel()
	const youth = time.Minute // WriteThroughTimeout: longer than any test step
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			var skew atomic.Int64 // added to n2's clock
			srv, a, b := youngFarm(t, mode, func(c *farm.Config) {
				c.LookupTimeout, c.WriteThroughTimeout = time.Second, youth
				c.NegativeCacheTTL = time.Hour // outlives the clock's move
				if c.NodeName == "n2" {
					// n2 never hears the session on the bus: only
					// the store can give it.
					c.Bus = deafBus{c.Bus}
					c.Now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
				}
			}, nil)
			ccfg := farmtest.Client(tls.VersionTLS13, &tlstest.FrozenCache{})
			unpause := pausedWrites(t, srv)
			tlstest.MustDial(t, a.Server.Addr, ccfg)
			if tlstest.MustDial(t, b.Server.Addr, ccfg).DidResume {
				t.Fatal("n2 resumed a session the store could not have yet")
			}
			st := b.Node.Metrics()
			if got := farmtest.Counter(st, "tlsfarm_farm_young_waits_total", "result", "gave_up"); got != 1 {
				farmtest.LogStats(t, []*farmtest.Member{a, b})
				t.Fatalf("young waits gave_up = %d after the first try on n2, want 1", got)
			}
			// The ID grows old to n2, then the store takes the write,
			// once n2's last read has ended: a read n2's handshake gave
			// up on goes on, detached, and on a loaded machine could
			// reach the store after the write and count a hit.
			skew.Store(int64(2 * youth))
			farmtest.Eventually(t, 10*time.Second, "n2's reads ended", func() bool { return readsInFlight(b) == 0 })
			unpause()
			farmtest.Eventually(t, 10*time.Second, "n1 stored the session", func() bool {
				return farmtest.Counter(a.Node.Metrics(), "tlsfarm_farm_store_writes_total") >= 1
			})
			if !tlstest.MustDial(t, b.Server.Addr, ccfg).DidResume {
				farmtest.LogStats(t, []*farmtest.Member{a, b})
				t.Fatal("the young miss was remembered: n2 did not look the session up again")
			}
			st = b.Node.Metrics()
			for r, want := range map[string]uint64{"gave_up": 1, "stored": 0, "arrived": 0} {
				if got := farmtest.Counter(st, "tlsfarm_farm_young_waits_total", "result", r); got != want {
					t.Fatalf("young waits %s = %d, want %d (the second try must be an old ID's lookup)", r, got, want)
				}
			}
			if got := farmtest.Counter(st, "tlsfarm_farm_store_lookups_total", "result", "negative"); got != 0 {
				t.Fatalf("negative-cache hits = %d, want 0", got)
			}
			if got := farmtest.Counter(st, "tlsfarm_farm_store_lookups_total", "result", "hit"); got != 1 {
				t.Fatalf("store hits = %d, want 1 (the resumption came from the store)", got)
			}
		})
	}
}

// readsInFlight returns how many of m's store reads for sessions have
// begun and not ended.
func readsInFlight(m *farmtest.Member) int {
	st := m.Node.Metrics()
	ended := uint64(0)
	for _, r := range []string{"hit", "miss", "timeout", "error", "rejected"} {
		ended += farmtest.Counter(st, "tlsfarm_farm_store_lookups_total", "result", r)
	}
	return int(farmtest.Counter(st, "tlsfarm_farm_lookups_total") - ended)
}

// TestYoungMissReadEndingOldNotRemembered: a store read for a young ID that
// ends only after the ID grew old is not remembered as a miss either: the
// write it missed may have landed just after the read, while the ID was
// still young. n2's reads (in store-only mode the young wait's hedged
// reads too) are held in the store until n2's clock has moved past the
// ID's youth; they then miss, and once the store has the session, the
// same ticket resumes on n2.
func TestYoungMissReadEndingOldNotRemembered(t *testing.T) {
	t.Parallel()
	const youth = time.Minute
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			var skew atomic.Int64 // added to n2's clock
			held := heldReads{release: make(chan struct{}), entered: make(chan struct{}), once: new(sync.Once)}
			srv, a, b := youngFarm(t, mode, func(c *farm.Config) {
				c.LookupTimeout, c.WriteThroughTimeout = 200*time.Millisecond, youth
				c.NegativeCacheTTL = time.Hour
				c.OpTimeout = time.Minute // the held read outlives the handshake
				if c.NodeName == "n2" {
					c.Bus = deafBus{c.Bus}
					held.Store = c.Store
					c.Store = held
					c.Now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
				}
			}, nil)
			ccfg := farmtest.Client(tls.VersionTLS13, &tlstest.FrozenCache{})
			unpause := pausedWrites(t, srv)
			released := false
			defer func() {
				if !released {
					close(held.release)
				}
			}()
			tlstest.MustDial(t, a.Server.Addr, ccfg)
			if tlstest.MustDial(t, b.Server.Addr, ccfg).DidResume {
				t.Fatal("n2 resumed a session the store could not have yet")
			}
			select {
			case <-held.entered:
			case <-time.After(10 * time.Second):
				t.Fatal("n2 never read the store")
			}
			skew.Store(int64(2 * youth)) // the ID is old to n2 ...
			released = true
			close(held.release) // ... before its reads end, with misses
			// All of them: in store-only mode the young wait read again
			// alongside the held read (youngHedge), and those reads,
			// held too, go on detached once the handshake gives up. One
			// that reached the store after the write would find the
			// session and count a second hit.
			farmtest.Eventually(t, 10*time.Second, "n2's held reads ended", func() bool {
				return readsInFlight(b) == 0 &&
					farmtest.Counter(b.Node.Metrics(), "tlsfarm_farm_store_lookups_total", "result", "miss") >= 1
			})
			before := farmtest.Counter(b.Node.Metrics(), "tlsfarm_farm_lookups_total")
			unpause()
			farmtest.Eventually(t, 10*time.Second, "n1 stored the session", func() bool {
				return farmtest.Counter(a.Node.Metrics(), "tlsfarm_farm_store_writes_total") >= 1
			})
			if !tlstest.MustDial(t, b.Server.Addr, ccfg).DidResume {
				farmtest.LogStats(t, []*farmtest.Member{a, b})
				t.Fatal("a miss read while the ID was young was remembered: n2 did not look the session up again")
			}
			st := b.Node.Metrics()
			if got := farmtest.Counter(st, "tlsfarm_farm_store_lookups_total", "result", "negative"); got != 0 {
				t.Fatalf("negative-cache hits = %d, want 0", got)
			}
			if got := farmtest.Counter(st, "tlsfarm_farm_store_lookups_total", "result", "hit"); got != 1 {
				t.Fatalf("store hits = %d, want 1 (the resumption came from the store); n2's store reads: %d begun before the write (misses %d), %d since",
					got, before, farmtest.Counter(st, "tlsfarm_farm_store_lookups_total", "result", "miss"),
					farmtest.Counter(st, "tlsfarm_farm_lookups_total")-before)
			}
		})
	}
}

// heldReads is a store whose session reads wait until release is closed;
// entered is closed when the first begins.
type heldReads struct {
	transport.Store
	release, entered chan struct{}
	once             *sync.Once
}

func (h heldReads) GetRecord(ctx context.Context, key string) ([]byte, error) {
	h.once.Do(func() { close(h.entered) })
	select {
	case <-h.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return h.Store.GetRecord(ctx, key)
}

// deafBus publishes, but delivers nothing it receives.
type deafBus struct{ transport.Bus }

func (b deafBus) Subscribe(ctx context.Context, _ func([]byte), state func(bool, error)) error {
	return b.Bus.Subscribe(ctx, func([]byte) {}, state)
}

// stallingStore is a real store whose next read, once armed, stalls for
// stall (or until its context ends) before it reads: a read in the store's
// tail on a loaded host.
type stallingStore struct {
	transport.Store
	armed atomic.Int32 // reads to let through before the one that stalls, plus one; 0: none stalls
	stall time.Duration
}

func (s *stallingStore) GetRecord(ctx context.Context, key string) ([]byte, error) {
	if s.armed.Load() > 0 && s.armed.Add(-1) == 0 {
		select {
		case <-time.After(s.stall):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return s.Store.GetRecord(ctx, key)
}

// TestYoungWaitOutlastsSlowRead: in store-only mode, a young wait whose
// second read of the store stalls longer than the lookup deadline still
// finds the session once it is written (the store holding writes for
// 300 ms): it reads again alongside the stalled read. Waiting for that one
// read, it would give up.
func TestYoungWaitOutlastsSlowRead(t *testing.T) {
	t.Parallel()
	const pause = 300 * time.Millisecond
	srv := redistest.Start(t)
	name := redistest.Farm(t)
	var slow *stallingStore
	newTransport := func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
		bus, store := redisTransport(srv.URL())(t, farmName)
		if slow == nil {
			return bus, store
		}
		slow.Store = store
		return bus, slow
	}
	o := farmtest.Options{NewTransport: newTransport, Mode: farm.StoreOnly, WriteThrough: true, Secret: farm.NewSecret(1),
		Tweak: func(c *farm.Config) { c.LookupTimeout, c.WriteThroughTimeout = time.Second, time.Second }}
	a := farmtest.Join(t, "n1", name, o)
	slow = &stallingStore{stall: 3 * time.Second}
	b := farmtest.Join(t, "n2", name, o)
	farmtest.WaitConnected(t, a, b)
	ccfg := farmtest.Client(tls.VersionTLS13, &tlstest.SharedCache{})
	pauseWrites(t, srv, pause)
	tlstest.MustDial(t, a.Server.Addr, ccfg)
	slow.armed.Store(2)
	start := time.Now()
	if !tlstest.MustDial(t, b.Server.Addr, ccfg).DidResume {
		farmtest.LogStats(t, []*farmtest.Member{a, b})
		t.Fatal("n2 did not resume: its wait hung on the stalled read")
	}
	t.Logf("n2 resumed after %v", time.Since(start))
	if n := slow.armed.Load(); n != 0 {
		t.Fatalf("n2 made %d reads of the store, want at least 2: the stall was not tried", 2-n)
	}
	if got := farmtest.Counter(b.Node.Metrics(), "tlsfarm_farm_young_waits_total", "result", "stored"); got != 1 {
		t.Fatalf("young waits stored = %d, want 1", got)
	}
}

// TestYoungWaitHearsBusAfterStoreRead: in broadcast mode a young wait
// reads the store once half its lookup deadline is left, and a miss there
// does not end it: the issuer's write and publish go out together, so a
// batch held up (the store and the bus holding every write for 900 ms
// here, as behind a slow flush before it) reaches the store and the bus at
// once, after that read. The wait hears the bus until the deadline (1.2 s)
// and resumes. It used to give up after the read, at 600 ms, with time and
// youth left: a slow publish (300 ms, a session queued behind a batch in
// flight waiting two of them) lost a fifth of TLS 1.3 roaming resumptions
// with a 1 s deadline.
func TestYoungWaitHearsBusAfterStoreRead(t *testing.T) {
	t.Parallel()
	const pause = 900 * time.Millisecond
	for _, tv := range versions {
		t.Run(tv.name, func(t *testing.T) {
			srv, a, b := youngFarm(t, farm.Broadcast, func(c *farm.Config) {
				c.LookupTimeout, c.WriteThroughTimeout = 1200*time.Millisecond, 2*time.Second
			}, nil)
			const rounds = 3
			for i := range rounds {
				ccfg := farmtest.Client(tv.v, &tlstest.SharedCache{})
				pauseWrites(t, srv, pause)
				paused := time.Now() // the pause began before this
				tlstest.MustDial(t, a.Server.Addr, ccfg)
				start := time.Now()
				if !tlstest.MustDial(t, b.Server.Addr, ccfg).DidResume {
					farmtest.LogStats(t, []*farmtest.Member{a, b})
					t.Fatalf("round %d: n2 did not resume (after %v): its wait ended at the store's miss", i, time.Since(start))
				}
				t.Logf("round %d: n2 resumed after %v", i, time.Since(start))
				// The next round starts with the store free: past the
				// pause, with the writes it held done (n1's of this
				// round's session among them).
				time.Sleep(time.Until(paused.Add(pause + 300*time.Millisecond)))
				farmtest.Eventually(t, 5*time.Second, "n1's write of the session landed", func() bool {
					return farmtest.Counter(a.Node.Metrics(), "tlsfarm_farm_store_writes_total") >= uint64(i+1)
				})
			}
			st := b.Node.Metrics()
			// Each wait read the store, which missed (the writes held),
			// and then the bus brought the session.
			if got := farmtest.Counter(st, "tlsfarm_farm_store_lookups_total", "result", "miss"); got != rounds {
				farmtest.LogStats(t, []*farmtest.Member{a, b})
				t.Fatalf("store misses = %d, want %d: the waits did not read the store before the bus brought the session", got, rounds)
			}
			if got := farmtest.Counter(st, "tlsfarm_farm_young_waits_total", "result", "arrived"); got != rounds {
				t.Fatalf("young waits arrived = %d, want %d", got, rounds)
			}
		})
	}
}
