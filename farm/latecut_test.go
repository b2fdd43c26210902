package farm_test

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/natstest"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// passHeld lets the writes held now go, and holds every write that comes
// to the gate from now on: of the writes in a row, the first lands and
// the next waits.
func (g *gatedStore) passHeld() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.hold != nil {
		close(g.hold)
	}
	g.hold = make(chan struct{})
}

// TestLateWriteReadBeforeCutHeard is the window the late write of a
// session left: n1 issues S while its store path is down (its first
// write fails, S waits in its backlog) and the bus brings S to n2 at
// once. n1's bus path is frozen, and the client resumes S on n2, whose
// cut of the store's record finds none. n1's store path comes back, and
// n1 writes S again, read whole from its cache; n2's child, which carries
// the cut, reaches n1 after that read and before the write lands (the
// write is held in flight meanwhile). n1 then writes the cut again, behind
// the write (recutWritten), but that write is held in turn: until it
// lands, the store must not hold S whole. Past S's grace, a node that
// never held S (n3, joining now) loads it from the store, and must not
// resume it.
func TestLateWriteReadBeforeCutHeard(t *testing.T) {
	t.Parallel()
	for _, store := range []string{"redis", "nats"} {
		t.Run(store, func(t *testing.T) {
			t.Parallel()
			testLateWriteReadBeforeCutHeard(t, store)
		})
	}
}

func testLateWriteReadBeforeCutHeard(t *testing.T, store string) {
	const grace = 2 * time.Second
	f := startLateWriteFarm(t, store, func(c *session.Config) { c.ResumeGrace = grace })
	n1, n2, g, proxy, rc := f.ms[0], f.ms[1], f.stores[0], f.proxy, f.rc
	stored := f.stored
	time.Sleep(1200 * time.Millisecond) // past the re-sends asked for at start

	// n1 issues S; its store write fails, the bus brings S to n2.
	g.failing.Store(true)
	t.Cleanup(func() { g.failing.Store(false); g.setHeld(false) })
	c, id := f.issueS()

	// The client resumes S on n2, whose cut finds no record; n1 does not
	// hear of it yet.
	proxy.Freeze()
	thawed := false
	t.Cleanup(func() {
		if !thawed {
			proxy.Thaw()
		}
	})
	kids := farmtest.HandshakeSessions(n2.Cache)
	if !tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
		t.Fatal("S did not resume on n2")
	}
	cutAt := time.Now()
	farmtest.Eventually(t, 5*time.Second, "n2 stored S's child (and its cut of S)", func() bool {
		return len(kids()) > 0 && stored(kids()[0])
	})

	// n1's store path comes back: its late write of S, read whole, is
	// held in flight.
	g.setHeld(true)
	g.failing.Store(false)
	farmtest.Eventually(t, 10*time.Second, "n1's late write of S is held", func() bool { return g.waiting.Load() > 0 })

	// The cut reaches n1 between the read and the write's landing.
	proxy.Thaw()
	thawed = true
	farmtest.Eventually(t, 5*time.Second, "n1 cut its copy of S", func() bool {
		r, ok := lookup(n1.Cache, id)
		return ok && time.Until(r.Expires) <= grace
	})

	// The write lands; what n1 writes behind it is held.
	g.passHeld()
	farmtest.Eventually(t, 5*time.Second, "n1's late write of S landed", func() bool { return stored(id) })
	if store == "redis" {
		if ttl := gatedTTL(t, rc, g.Transport, id); ttl > grace {
			t.Errorf("n1's late write put S in the store whole (%v left) after n2 cut it to its grace (%v)", ttl.Round(time.Second), grace)
		}
	}

	// Past S's grace, the store holds no S, and n3 does not resume it.
	time.Sleep(time.Until(cutAt.Add(grace + 300*time.Millisecond)))
	if stored(id) {
		t.Error("the store holds S past its grace, from n1's late write")
	}
	if f.n3Resumes(c) {
		t.Error("n3 resumed S past its grace, from n1's late write")
	}
	g.setHeld(false)
}

// gatedNATS is a gatedStore's gate over a NATS store.
type gatedNATS struct {
	*natsbus.Transport
	g *gatedStore
}

func (n *gatedNATS) PutRecords(ctx context.Context, items ...transport.Item) error {
	if err := n.g.gate(ctx); err != nil {
		return err
	}
	n.g.mu.Lock()
	if n.g.ttls == nil {
		n.g.ttls = make(map[string][]time.Duration)
	}
	for _, it := range items {
		n.g.ttls[it.Key] = append(n.g.ttls[it.Key], it.TTL)
	}
	n.g.mu.Unlock()
	err := n.Transport.PutRecords(ctx, items...)
	keys := make([]string, len(items))
	for i, it := range items {
		keys[i] = it.Key
	}
	n.g.noteApplied(keys, err)
	return n.g.landed(err)
}

func (n *gatedNATS) GetRecord(ctx context.Context, key string) ([]byte, error) {
	return n.g.genRead(key, func() ([]byte, error) { return n.Transport.GetRecord(ctx, key) })
}

func (n *gatedNATS) DeleteRecords(ctx context.Context, keys ...string) error {
	if err := n.g.gate(ctx); err != nil {
		return err
	}
	n.g.noteDeleted(keys)
	err := n.Transport.DeleteRecords(ctx, keys...)
	n.g.noteApplied(keys, err)
	return err
}

// A lateWriteFarm is the two-node farm of the late-write tests: each
// node's store path gated (its writes made to fail, land and fail, or be
// held in flight), the bus on a proxy that can be frozen, the store on
// Redis or on NATS ("redis" or "nats"), with the bus on Redis either way.
type lateWriteFarm struct {
	t      *testing.T
	ms     []*farmtest.Member
	name   string
	o      *farmtest.Options
	stores []*gatedStore
	proxy  *nettest.Proxy
	rc     *redis.Client // the Redis server's own client, for the tests' reads
	nstore *natsbus.Transport
}

// startLateWriteFarm starts a lateWriteFarm whose sessions have the
// tweakCache settings, with n1's held writes never timing out and no
// tallies (n1 publishes nothing while its bus is frozen).
func startLateWriteFarm(t *testing.T, store string, tweakCache func(*session.Config)) *lateWriteFarm {
	t.Helper()
	url := redistest.URL(t)
	f := &lateWriteFarm{t: t}
	paths := slowBusStorePaths(t, url, &f.stores, &f.proxy)
	var nstores []*natsbus.Transport
	if store == "nats" {
		paths = slowBusNATSStorePaths(t, url, &f.stores, &nstores, &f.proxy)
	}
	f.o = &farmtest.Options{Mode: farm.Broadcast, NewTransport: paths, TweakCache: tweakCache,
		Tweak: func(c *farm.Config) {
			c.OpTimeout = 10 * time.Second // n1's held writes must not time out
			c.TallyInterval = -1           // n1 publishes nothing while its bus is frozen
		}}
	f.ms, f.name = farmtest.Start(t, 2, f.o)
	if store == "nats" {
		f.nstore = nstores[0]
	}
	f.rc = redis.NewClient(mustParseRedis(t, url))
	t.Cleanup(func() { f.rc.Close() })
	return f
}

// stored reports whether the store holds a record of id.
func (f *lateWriteFarm) stored(id session.ID) bool {
	return f.storedKey("s:" + hex.EncodeToString(id[:]))
}

// storedKey reports whether the store holds a record under key.
func (f *lateWriteFarm) storedKey(key string) bool {
	if f.nstore == nil {
		n, err := f.rc.Exists(context.Background(), f.stores[0].Transport.RecordKey(key)).Result()
		if err != nil {
			f.t.Fatal(err)
		}
		return n > 0
	}
	_, err := f.nstore.GetRecord(context.Background(), key)
	if err != nil && !errors.Is(err, transport.ErrNotFound) {
		f.t.Fatal(err)
	}
	return err == nil
}

// issueS has a client issued a session S on n1, whose store path the test
// made fail, and waits until the bus brought S to n2 and n1's first write
// of S came back failed. It returns the client's cache and S's ID.
func (f *lateWriteFarm) issueS() (*tlstest.FrozenCache, session.ID) {
	t := f.t
	t.Helper()
	n1, n2 := f.ms[0], f.ms[1]
	c := &tlstest.FrozenCache{}
	ids := farmtest.HandshakeSessions(n1.Cache)
	tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, c))
	id := ids()[0]
	farmtest.Eventually(t, 5*time.Second, "n2 holds S", func() bool { _, ok := lookup(n2.Cache, id); return ok })
	farmtest.Eventually(t, 5*time.Second, "n1's first write of S came back failed", func() bool {
		return !f.stores[0].landing.Load() && farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_store_write_errors_total") > 0
	})
	return c, id
}

// issueHeldS has a client issued a session S on n1, whose first store
// write of S the test holds in flight (until the test lets it go), and
// waits until the bus brought S to n2. It returns the client's cache and
// S's ID.
func (f *lateWriteFarm) issueHeldS() (*tlstest.FrozenCache, session.ID) {
	t := f.t
	t.Helper()
	n1, n2, g1 := f.ms[0], f.ms[1], f.stores[0]
	g1.setHeld(true)
	t.Cleanup(func() { g1.setHeld(false) })
	c := &tlstest.FrozenCache{}
	ids := farmtest.HandshakeSessions(n1.Cache)
	tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, c))
	id := ids()[0]
	farmtest.Eventually(t, 5*time.Second, "n1's first write of S is held", func() bool { return g1.waiting.Load() > 0 })
	farmtest.Eventually(t, 5*time.Second, "n2 holds S", func() bool { _, ok := lookup(n2.Cache, id); return ok })
	return c, id
}

// n3Resumes joins a node that never held S, n3, and reports whether the
// client with cache c resumes S there (from what the store holds).
func (f *lateWriteFarm) n3Resumes(c *tlstest.FrozenCache) bool {
	t := f.t
	t.Helper()
	n3 := farmtest.Join(t, "n3", f.name, *f.o)
	farmtest.WaitConnected(t, n3)
	return tlstest.MustDial(t, n3.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume
}

// slowBusNATSStorePaths is slowBusStorePaths with each member's store on
// the shared NATS server (gated, the gates appended to *stores, the
// transports to *nstores) and its bus on the Redis at url.
func slowBusNATSStorePaths(t *testing.T, url string, stores *[]*gatedStore, nstores *[]*natsbus.Transport, proxy **nettest.Proxy) func(testing.TB, string) (transport.Bus, transport.Store) {
	redisPaths := slowBusStorePaths(t, url, new([]*gatedStore), proxy)
	natsURL := farmtest.ServerURL(t, "NATS", "TLSFARM_NATS_URL", "nats://127.0.0.1:4222")
	return func(tb testing.TB, farmName string) (transport.Bus, transport.Store) {
		bus, _ := redisPaths(tb, farmName)
		st, err := natsbus.Open(natsURL, farmName, nil)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { st.Close() })
		tb.Cleanup(func() { natstest.DeleteBuckets(tb, st.Conn(), st.Bucket(), st.RecordBucket()) })
		g := &gatedStore{}
		*stores = append(*stores, g)
		*nstores = append(*nstores, st)
		return bus, &gatedNATS{Transport: st, g: g}
	}
}
