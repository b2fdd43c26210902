package farm_test

import (
	"context"
	"crypto/tls"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
)

// load runs a client against random members until stop is closed, and
// counts handshakes that failed outright (not full handshakes: errors).
// It keeps the handshakes that did not resume (misses), with where and
// when the session the client presented was issued.
type load struct {
	attempts, resumed, failed atomic.Int64
	lastErr                   atomic.Value
	wg                        sync.WaitGroup
	stop                      chan struct{}

	mu     sync.Mutex
	misses []loadMiss
}

// A loadMiss is a handshake of a load that did not resume: begun at at on
// member to, presenting the session member from issued at issued (from
// is -1 for a client's first handshake).
type loadMiss struct {
	at, issued time.Time
	to, from   int
}

// missesSince returns the misses begun at t or later.
func (l *load) missesSince(t time.Time) []loadMiss {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []loadMiss
	for _, m := range l.misses {
		if !m.at.Before(t) {
			out = append(out, m)
		}
	}
	return out
}

func startLoad(ms []*farmtest.Member, version uint16, clients int) *load {
	l := &load{stop: make(chan struct{})}
	for range clients {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			ccfg := farmtest.Client(version, &tlstest.SharedCache{})
			from, issued := -1, time.Time{} // the session the client holds
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				to, at := rand.N(len(ms)), time.Now()
				cs, err := tlstest.Dial(ms[to].Server.Addr, ccfg)
				l.attempts.Add(1)
				if err != nil {
					l.failed.Add(1)
					l.lastErr.Store(err)
					continue
				}
				if cs.DidResume {
					l.resumed.Add(1)
				} else {
					l.mu.Lock()
					l.misses = append(l.misses, loadMiss{at: at, issued: issued, to: to, from: from})
					l.mu.Unlock()
				}
				// The server issued the client a new session (TLS 1.3:
				// after every handshake).
				from, issued = to, time.Now()
			}
		}()
	}
	return l
}

func (l *load) halt() {
	close(l.stop)
	l.wg.Wait()
}

// TestRedisKilledDuringLoad kills the farm's Redis under load: no handshake
// fails (they become full handshakes where a session is unknown), and once
// Redis is back, sharing works again without restarting any node.
func TestRedisKilledDuringLoad(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ms, _ := farmtest.Start(t, 3, &farmtest.Options{NewTransport: redisTransport(srv.URL()), WriteThrough: true, Tweak: func(c *farm.Config) {
		c.BreakerCooldown = 500 * time.Millisecond
		c.OpTimeout = 300 * time.Millisecond
	}})
	l := startLoad(ms, tls.VersionTLS13, 2)
	waitFor(t, 10*time.Second, func() bool { return l.resumed.Load() > 50 })

	srv.Kill()
	killedAt := l.attempts.Load()
	waitFor(t, 10*time.Second, func() bool { return l.attempts.Load() > killedAt+100 })
	for _, m := range ms {
		farmtest.Eventually(t, 10*time.Second, m.Name+" noticed the outage", func() bool { return !m.Node.Connected() })
	}
	duringOutage := l.attempts.Load() - killedAt

	srv.Restart()
	restarted := time.Now()
	for _, m := range ms {
		farmtest.Eventually(t, 10*time.Second, m.Name+" resubscribed", func() bool { return m.Node.Connected() })
	}
	// Sharing works again: a new session made on n1 reaches n2 and n3.
	before := []uint64{farmtest.Counter(ms[1].Node.Metrics(), "tlsfarm_farm_inserted_total"), farmtest.Counter(ms[2].Node.Metrics(), "tlsfarm_farm_inserted_total")}
	tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tls.VersionTLS13, tls.NewLRUClientSessionCache(1)))
	for i, m := range ms[1:] {
		farmtest.Eventually(t, 10*time.Second, m.Name+" received a new session after the restart", func() bool {
			return farmtest.Counter(m.Node.Metrics(), "tlsfarm_farm_inserted_total") > before[i]
		})
	}
	healed := time.Since(restarted)
	l.halt()

	t.Logf("%d handshakes during the outage; %d in all, %d resumed, %d failed; sharing healed %v after restart",
		duringOutage, l.attempts.Load(), l.resumed.Load(), l.failed.Load(), healed)
	if n := l.failed.Load(); n != 0 {
		t.Fatalf("%d handshakes failed (last: %v); want 0", n, l.lastErr.Load())
	}
	if healed > 10*time.Second {
		t.Fatalf("sharing took %v to heal, want at most 10s", healed)
	}
	// Handshakes stopped waiting for the store during the outage: the
	// health probe saw it down, or the write-through breaker tripped.
	if st := ms[0].Node.Metrics(); farmtest.Counter(st, "tlsfarm_farm_breaker_trips_total") == 0 && farmtest.Counter(st, "tlsfarm_farm_probe_failures_total") == 0 {
		t.Fatalf("neither the probe nor the write-through breaker saw the outage: %+v", st)
	}
}

// TestPausedRedisDoesNotStallHandshakes freezes Redis (no resets, no
// answers, as in a partition): handshakes wait at most the deadlines.
func TestPausedRedisDoesNotStallHandshakes(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ms, _ := farmtest.Start(t, 2, &farmtest.Options{NewTransport: redisTransport(srv.URL()), WriteThrough: true, Tweak: func(c *farm.Config) {
		c.WriteThroughTimeout = 50 * time.Millisecond
		c.LookupTimeout = 20 * time.Millisecond
	}})
	srv.Pause()
	defer srv.Resume()
	// A client makes a session on one node (which does not wait for the
	// store), then presents it at once to the other, which lacks it: a
	// young session, waited for within the lookup deadline, then a full
	// handshake.
	var worst time.Duration
	for i := range 20 {
		ccfg := farmtest.Client(tls.VersionTLS13, &tlstest.SharedCache{})
		for _, m := range []*farmtest.Member{ms[i%2], ms[(i+1)%2]} {
			start := time.Now()
			tlstest.MustDial(t, m.Server.Addr, ccfg)
			worst = max(worst, time.Since(start))
		}
	}
	t.Logf("slowest handshake with Redis paused: %v", worst)
	if worst > 2*time.Second {
		t.Fatalf("a handshake took %v with Redis paused", worst)
	}
	var gaveUp, trips uint64
	for _, m := range ms {
		st := m.Node.Metrics()
		gaveUp += farmtest.Counter(st, "tlsfarm_farm_young_waits_total", "result", "gave_up")
		trips += farmtest.Counter(st, "tlsfarm_farm_breaker_trips_total")
	}
	if gaveUp == 0 && trips == 0 {
		t.Fatalf("no young wait given up, no breaker trip: %+v", ms[0].Node.Metrics())
	}
}

// TestForgedMessagesRejected publishes, as someone with access to Redis but
// not the farm secret, forged, tampered, replayed and foreign messages: all
// are rejected and counted, but for the replay (past MaxAge), which is
// counted as too old to insert; nothing is inserted.
func TestForgedMessagesRejected(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	// The nodes use the farm's shared channel only (as older versions
	// did), where the test captures and injects messages, and n1 hears
	// its own.
	// Tallies are off, so that the counts of messages below are exact.
	noTallies := func(c *farm.Config) { c.TallyInterval = -1 }
	o := farmtest.Options{NewTransport: redisEchoTransport(url), Tweak: func(c *farm.Config) {
		c.MaxAge = 500 * time.Millisecond
		noTallies(c)
	}}
	ms, _ := farmtest.Start(t, 2, &o)
	elsewhere, _ := farmtest.Start(t, 1, &farmtest.Options{NewTransport: redisEchoTransport(url), Tweak: noTallies})

	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	raw := redis.NewClient(opt)
	defer raw.Close()
	ctx := context.Background()

	// Capture real session messages from both farms' channels.
	capture := func(channel string) <-chan []byte {
		ps := raw.Subscribe(ctx, channel)
		if _, err := ps.Receive(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ps.Close() })
		ch := make(chan []byte, 10)
		go func() {
			for m := range ps.Channel() {
				if p := []byte(m.Payload); len(p) > farm.EnvTypeAt && p[farm.EnvTypeAt] == farm.EnvTypeSess {
					ch <- p
				}
			}
		}()
		return ch
	}
	ours, theirs := capture(redisOf(ms[0]).Channel()), capture(redisOf(elsewhere[0]).Channel())
	tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tls.VersionTLS13, tls.NewLRUClientSessionCache(1)))
	tlstest.MustDial(t, elsewhere[0].Server.Addr, farmtest.Client(tls.VersionTLS13, tls.NewLRUClientSessionCache(1)))
	real := <-ours
	foreign := <-theirs
	farmtest.Eventually(t, 5*time.Second, "n2 got the real session", func() bool { return farmtest.Counter(ms[1].Node.Metrics(), "tlsfarm_farm_inserted_total") == 1 })

	publish := func(msg []byte) {
		if err := raw.Publish(ctx, redisOf(ms[0]).Channel(), msg).Err(); err != nil {
			t.Fatal(err)
		}
	}
	tampered := append([]byte(nil), real...)
	tampered[len(tampered)-30] ^= 0x40

	publish([]byte("hello, I am a session"))
	publish(tampered)
	publish(foreign)
	time.Sleep(600 * time.Millisecond) // past MaxAge
	publish(real)

	for i, m := range ms {
		// The replay, past MaxAge, is authentic: n2 opens it (a
		// peer's session message is taken up to the cache's Lifetime,
		// for the grace cuts it implies) but does not insert its
		// session, and counts it (old_sessions).
		want := map[string]uint64{ // by reason
			"malformed": 1, "seal": 1, "other_farm": 1, "too_old": 0,
		}
		if i == 0 {
			// n1 sent the real message: it drops the tampered copy and
			// the replay as its own before opening them.
			want["seal"] = 0
		}
		total := uint64(0)
		for _, n := range want {
			total += n
		}
		farmtest.Eventually(t, 5*time.Second, m.Name+" rejected the injected messages", func() bool {
			return farm.RejectedTotal(m.Node.Metrics()) == total
		})
		st := m.Node.Metrics()
		for why, n := range want {
			if got := farmtest.Counter(st, "tlsfarm_farm_rejected_total", "reason", why); got != n {
				t.Fatalf("%s: rejected[%v] = %d, want %d (all: %v)", m.Name, why, got, n, st)
			}
		}
	}
	// n1 drops its original, the tampered copy and the replay as its own.
	farmtest.Eventually(t, 5*time.Second, "n1 dropped three of its own messages", func() bool {
		return farmtest.Counter(ms[0].Node.Metrics(), "tlsfarm_farm_received_total", "kind", "own") == 3
	})
	farmtest.Eventually(t, 5*time.Second, "n2 took the replay as too old to insert", func() bool {
		return farmtest.Counter(ms[1].Node.Metrics(), "tlsfarm_farm_old_sessions_total") == 1
	})
	if st := ms[1].Node.Metrics(); farmtest.Counter(st, "tlsfarm_farm_inserted_total") != 1 {
		t.Fatalf("n2 inserted %d sessions, want only the real one", farmtest.Counter(st, "tlsfarm_farm_inserted_total"))
	}
	if st := ms[0].Node.Metrics(); farmtest.Counter(st, "tlsfarm_farm_inserted_total") != 0 {
		t.Fatalf("n1 inserted %d sessions from forged messages", farmtest.Counter(st, "tlsfarm_farm_inserted_total"))
	}
}

// TestTamperedStoreValueRejected overwrites a stored session with another
// stored session's value (moved between keys) and with garbage: lookups
// refuse both.
func TestTamperedStoreValueRejected(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	o := farmtest.Options{NewTransport: redisTransport(url), Mode: farm.StoreOnly, WriteThrough: true}
	ms, _ := farmtest.Start(t, 2, &o)
	opt, _ := redis.ParseURL(url)
	raw := redis.NewClient(opt)
	defer raw.Close()
	ctx := context.Background()

	a, b := &tlstest.FrozenCache{}, &tlstest.FrozenCache{}
	tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tls.VersionTLS13, a))
	tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tls.VersionTLS13, b))
	// The store writes go out after the handshakes (they do not wait for
	// them): under load the second was not in yet when KEYS ran.
	var keys []string
	var err error
	farmtest.Eventually(t, 5*time.Second, "both sessions stored", func() bool {
		keys, err = redistest.Keys(ctx, raw, redisOf(ms[0]).RecordKey("s:*"))
		return err == nil && len(keys) >= 2
	})
	if len(keys) != 2 {
		t.Fatalf("stored keys = %v, %v", keys, err)
	}
	v0, _ := raw.Get(ctx, keys[0]).Bytes()
	// Both keys now hold the first session's sealed value.
	raw.Set(ctx, keys[1], v0, time.Minute)
	resumed := 0
	for _, c := range []*tlstest.FrozenCache{a, b} {
		if tlstest.MustDial(t, ms[1].Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
			resumed++
		}
	}
	if resumed != 1 {
		farmtest.LogStats(t, ms)
		t.Fatalf("%d sessions resumed on n2, want 1 (the untouched one)", resumed)
	}
	if st := ms[1].Node.Metrics(); farmtest.Counter(st, "tlsfarm_farm_store_lookups_total", "result", "rejected") != 1 {
		t.Fatalf("StoreRejected = %d, want 1", farmtest.Counter(st, "tlsfarm_farm_store_lookups_total", "result", "rejected"))
	}
}

func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	farmtest.Eventually(t, d, "load progress", cond)
}
