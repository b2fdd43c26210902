package farm_test

import (
	"context"
	"crypto/tls"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/metric"
	"github.com/tlsfarm/tlsfarm/session"
)

// countingStore is a real store that counts its record GETs.
type countingStore struct {
	transport.Store
	gets atomic.Int64
}

func (s *countingStore) GetRecord(ctx context.Context, key string) ([]byte, error) {
	if !gateRead(key) {
		s.gets.Add(1)
	}
	return s.Store.GetRecord(ctx, key)
}

// gateRead reports whether key is a revoked chain's or ID's mark, which the hit
// gate reads while the node's bus delivery lags (under -race on a loaded
// machine, too): the stores that count GETs count the sessions' lookups,
// not those.
func gateRead(key string) bool {
	return strings.HasPrefix(key, farm.ChainMarkPrefix) || strings.HasPrefix(key, farm.IDMarkPrefix)
}

// longName is a server name of 300 bytes: longer than any record holds.
var longName = strings.Repeat(strings.Repeat("a", 59)+".", 5) + "example"

// TestLongServerNameDoesNotPoisonBatch mixes clients sending a 300-byte
// server name into concurrent load: they get full handshakes and no cached
// session (counted), and every other session still reaches the peers.
func TestLongServerNameDoesNotPoisonBatch(t *testing.T) {
	t.Parallel()
	ms, _ := farmtest.Start(t, 2, &farmtest.Options{NewTransport: redisTransport(redistest.URL(t))})
	const normal, long = 40, 10
	var wg sync.WaitGroup
	caches := make([]*tlstest.SharedCache, normal)
	var longResumed, longFailed atomic.Int64
	for i := range normal {
		caches[i] = &tlstest.SharedCache{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tls.VersionTLS13, caches[i]))
		}()
	}
	for range long {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ccfg := farmtest.Client(tls.VersionTLS13, &tlstest.SharedCache{})
			ccfg.ServerName = longName
			ccfg.InsecureSkipVerify = true // the certificate is for localhost
			for range 2 {
				cs, err := tlstest.Dial(ms[0].Server.Addr, ccfg)
				if err != nil {
					longFailed.Add(1)
					t.Errorf("handshake with a %d-byte server name: %v", len(longName), err)
					return
				}
				if cs.DidResume {
					longResumed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if n := longResumed.Load(); n != 0 {
		t.Errorf("%d handshakes with a %d-byte server name resumed; want full handshakes", n, len(longName))
	}
	if n, _ := metric.Value(ms[0].Cache.Metrics(), "tlsfarm_cache_refusals_total", "reason", "wrap_error"); n < 2*long {
		t.Errorf("sessions not cached for the long server name: %v counted, want %d", n, 2*long)
	}
	// Every other session reached the peer: each client resumes there.
	farmtest.Eventually(t, 10*time.Second, "n2 has every normal session", func() bool {
		return farmtest.Counter(ms[1].Node.Metrics(), "tlsfarm_farm_inserted_total") >= normal
	})
	for i := range normal {
		if !tlstest.MustDial(t, ms[1].Server.Addr, farmtest.Client(tls.VersionTLS13, caches[i])).DidResume {
			farmtest.LogStats(t, ms)
			t.Fatalf("client %d did not resume on n2", i)
		}
	}
	if st := ms[0].Node.Metrics(); farmtest.Counter(st, "tlsfarm_farm_publish_errors_total") != 0 || farmtest.Counter(st, "tlsfarm_farm_dropped_total") != 0 {
		t.Fatalf("publishing failed: %+v", st)
	}
}

// TestDeadIDCostsOneStoreGet presents an authentic ID whose session the
// store does not have 100 times: one store GET, then the negative cache.
func TestDeadIDCostsOneStoreGet(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	var counting *countingStore
	ms, _ := farmtest.Start(t, 1, &farmtest.Options{
		Mode: farm.StoreOnly,
		NewTransport: func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
			bus, store := redisTransport(url)(t, farmName)
			counting = &countingStore{Store: store}
			return bus, counting
		},
	})
	m := ms[0]
	dead := m.Cache.NewID() // authentic: it passes the MAC check
	cs := tls.ConnectionState{ServerName: "localhost"}
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 25 {
				if ss, _ := unwrapSession(m.Cache, dead[:], cs); ss != nil {
					t.Error("a dead ID resumed")
					return
				}
			}
		}()
	}
	wg.Wait()
	st := m.Node.Metrics()
	t.Logf("100 presentations: %d store GETs, %d negative hits, %d lookups", counting.gets.Load(), farmtest.Counter(st, "tlsfarm_farm_store_lookups_total", "result", "negative"), farmtest.Counter(st, "tlsfarm_farm_lookups_total"))
	if n := counting.gets.Load(); n > 1 {
		t.Fatalf("a dead ID presented 100 times cost %d store GETs, want at most 1", n)
	}
	if farmtest.Counter(st, "tlsfarm_farm_store_lookups_total", "result", "negative") < 90 {
		t.Fatalf("negative cache answered %d of 100 presentations: %+v", farmtest.Counter(st, "tlsfarm_farm_store_lookups_total", "result", "negative"), st)
	}
}

// TestBusNotDelayedByFailingStore pauses the store (a private Redis) of a
// farm whose bus is NATS: sessions keep reaching the peer over the bus as
// fast as before, and the store is reported down. The store's requests
// wait OpTimeout (5 s here), and a session held back for one arrives well
// past the bound (2 s), which a loaded machine's handshake and delivery
// stay under (1.47 s at worst in a loaded run, against a bound of 1 s
// with the default 2 s OpTimeout; ~10–60 ms on a quiet one).
func TestBusNotDelayedByFailingStore(t *testing.T) {
	t.Parallel()
	const opTimeout, bound = 5 * time.Second, 2 * time.Second
	natsURL := farmtest.ServerURL(t, "NATS", "TLSFARM_NATS_URL", "nats://127.0.0.1:4222")
	srv := redistest.Start(t)
	ms, _ := farmtest.Start(t, 2, &farmtest.Options{
		NewTransport: natsBusRedisStore(natsURL, srv.URL()),
		Tweak:        func(c *farm.Config) { c.OpTimeout = opTimeout },
	})
	srv.Pause()
	defer srv.Resume()
	farmtest.Eventually(t, 5*time.Second, "the store reported down", func() bool {
		return farmtest.Counter(ms[0].Node.Metrics(), "tlsfarm_farm_healthy", "path", "store") != 1
	})

	// Each session reaches n2 over the bus, however long the store hangs.
	var worst time.Duration
	for i := range 10 {
		before := farmtest.Counter(ms[1].Node.Metrics(), "tlsfarm_farm_inserted_total")
		start := time.Now()
		tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tls.VersionTLS13, tls.NewLRUClientSessionCache(1)))
		farmtest.Eventually(t, 2*opTimeout, "session reached n2", func() bool { return farmtest.Counter(ms[1].Node.Metrics(), "tlsfarm_farm_inserted_total") > before })
		worst = max(worst, time.Since(start))
		if i == 0 {
			time.Sleep(300 * time.Millisecond) // let a store write hang meanwhile
		}
	}
	t.Logf("slowest delivery over NATS with the store paused: %v; n1 %+v", worst, ms[0].Node.Metrics())
	// Before the store had a path of its own, a hung store held each
	// batch back for the store's op timeout.
	if worst > bound {
		t.Fatalf("a session took %v to reach the peer over the bus while the store hung", worst)
	}
	if st := ms[0].Node.Metrics(); farmtest.Counter(st, "tlsfarm_farm_publish_errors_total") != 0 {
		t.Fatalf("publishing failed while only the store was down: %+v", st)
	}
}

// TestJoinContextEndIsClose ends Join's context: the node leaves the farm
// as Close would (its hooks are gone: new sessions are not published).
func TestJoinContextEndIsClose(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	cache, err := session.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	tr, err := redisbus.Open(url, farmtest.FarmName(t))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx, cancel := context.WithCancel(context.Background())
	n, err := farm.Join(ctx, farm.Config{Farm: farmtest.FarmName(t), Secrets: []farm.Secret{farm.NewSecret(1)}, Cache: cache, Bus: tr, Store: tr})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close() // a second Close is harmless
	insertNew := func() {
		if err := cache.Insert(cache.NewID(), session.Record{State: []byte("s"), Expires: time.Now().Add(time.Hour)}, session.OriginHandshake); err != nil {
			t.Fatal(err)
		}
	}
	insertNew()
	farmtest.Eventually(t, 5*time.Second, "published while joined", func() bool {
		return farmtest.Counter(n.Metrics(), "tlsfarm_farm_published_total", "kind", "session") == 1
	})
	cancel()
	time.Sleep(200 * time.Millisecond)
	insertNew()
	time.Sleep(200 * time.Millisecond)
	if st := n.Metrics(); farmtest.Counter(st, "tlsfarm_farm_published_total", "kind", "session") != 1 || int(farmtest.Counter(st, "tlsfarm_farm_queue_length")) != 0 {
		t.Fatalf("after Join's context ended the node still takes sessions: %+v", st)
	}
}

// TestRotatorCloseUnregisters closes one node's rotator: the key sets its
// peer keeps announcing are no longer taken by it (they count as messages
// of a type the node does not expect).
func TestRotatorCloseUnregisters(t *testing.T) {
	t.Parallel()
	ms, _ := farmtest.Start(t, 2, &farmtest.Options{NewTransport: redisTransport(redistest.URL(t)), SessionMode: session.Stateless,
		Rotation: &farm.RotationConfig{Interval: time.Second}})
	ms[1].Rotator.Close()
	applied := farmtest.Counter(ms[1].Rotator.Metrics(), "tlsfarm_ticket_key_sets_applied_total")
	farmtest.Eventually(t, 10*time.Second, "n1 announces a key set that n2 ignores", func() bool {
		return farmtest.Counter(ms[1].Node.Metrics(), "tlsfarm_farm_rejected_total", "reason", "type") > 0
	})
	if got := farmtest.Counter(ms[1].Rotator.Metrics(), "tlsfarm_ticket_key_sets_applied_total"); got != applied {
		t.Fatalf("a closed rotator applied %d more key sets", got-applied)
	}
}

// slowStore is a real store whose record GETs take delay longer or, if
// gate is set, wait until it is closed.
type slowStore struct {
	transport.Store
	delay time.Duration
	gate  chan struct{}
	gets  atomic.Int64
}

func (s *slowStore) GetRecord(ctx context.Context, key string) ([]byte, error) {
	if !gateRead(key) {
		s.gets.Add(1)
	}
	var after <-chan time.Time // nil, as gate may be: never ready
	if s.gate == nil {
		after = time.After(s.delay)
	}
	select {
	case <-s.gate:
	case <-after:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return s.Store.GetRecord(ctx, key)
}

// TestLookupNotFailedByAnotherClient: two handshakes present one session
// that only the store has; the first gives up (its context ends) while the
// shared lookup runs. The second still resumes, from the one lookup. The
// store's GET waits for the test, which moves on only when it sees each
// step done: the first handshake's lookup reading the store, the second
// joined to it, the first gone.
func TestLookupNotFailedByAnotherClient(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	name, secret := farmtest.FarmName(t), farm.NewSecret(1)
	slow := &slowStore{gate: make(chan struct{})}
	o := farmtest.Options{NewTransport: redisTransport(url), Secret: secret, Mode: farm.StoreOnly,
		Tweak: func(c *farm.Config) { c.LookupTimeout, c.OpTimeout = 30*time.Second, 30*time.Second }}
	n1 := farmtest.Join(t, "n1", name, o)
	o.NewTransport = func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
		bus, store := redisTransport(url)(t, farmName)
		slow.Store = store
		return bus, slow
	}
	n2 := farmtest.Join(t, "n2", name, o)
	farmtest.WaitConnected(t, n1, n2)

	frozen := &tlstest.FrozenCache{}
	tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, frozen))
	farmtest.Eventually(t, 5*time.Second, "n1 stored the session", func() bool { return farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_store_writes_total") > 0 })

	cert, _ := tlstest.SharedCert()
	scfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	n2.Cache.Install(scfg)
	handshake := func(ctx context.Context) (tls.ConnectionState, error) {
		sc, cc := tlstest.Pipe()
		defer sc.Close()
		defer cc.Close()
		go tls.Server(sc, scfg).HandshakeContext(ctx)
		c := tls.Client(cc, farmtest.Client(tls.VersionTLS13, frozen))
		err := c.Handshake()
		return c.ConnectionState(), err
	}
	quitter, cancel := context.WithCancel(context.Background())
	defer cancel()
	go handshake(quitter)
	farmtest.Eventually(t, 20*time.Second, "the first handshake's lookup reads the store", func() bool {
		return slow.gets.Load() == 1 && n2.Node.LookupWaiters() == 1
	})
	done := make(chan tls.ConnectionState, 1)
	go func() {
		cs, err := handshake(context.Background())
		if err != nil {
			t.Error(err)
		}
		done <- cs
	}()
	farmtest.Eventually(t, 20*time.Second, "the second handshake joins the lookup", func() bool { return n2.Node.LookupWaiters() == 2 })
	cancel() // the first client hangs up mid-lookup
	farmtest.Eventually(t, 20*time.Second, "the first handshake gives up", func() bool {
		return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_lookups_abandoned_total", "cause", "canceled") == 1 && n2.Node.LookupWaiters() == 1
	})
	close(slow.gate) // the store answers
	if cs := <-done; !cs.DidResume {
		farmtest.LogStats(t, []*farmtest.Member{n1, n2})
		t.Fatal("the second handshake did not resume: it shared the first one's cancelled lookup")
	}
	if n := slow.gets.Load(); n != 1 {
		t.Fatalf("%d store GETs for one ID presented twice at once, want 1", n)
	}
}
