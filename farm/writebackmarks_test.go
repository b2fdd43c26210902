package farm_test

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/natstest"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestWriteBackHonoursPeersMarks: the store loses its data, and n2 then
// cuts or retires a session S that n1 holds whole, in the emptied store,
// where it finds no record and leaves its mark; n1 misses it (its bus
// path frozen). n1 then finds the store's generation changed and writes
// its sessions back (Item.NoLonger), S read whole. In the "cut" shape n1
// writes back within S's grace, over n2's cut mark: the store must hold S
// cut, not whole. In the "lapsed" shape it writes back after the cut
// lapsed, over its lapsed-cut mark; in the "retired" shape n2's store path
// failed when it resumed S, and n2 wrote its cut past S's grace, as a
// retirement, over which n1 writes back. Either way the store must not
// hold S after the write-back. Past S's grace, a node that never held S
// (n3, joining now) must not resume it: n1 stays deaf, and nothing writes
// S again. Before write-backs honoured the marks, n1 put S back whole.
// The bus on Redis, the store on a private Redis (restarted empty) or on
// NATS (its records purged).
func TestWriteBackHonoursPeersMarks(t *testing.T) {
	t.Parallel()
	for _, store := range []string{"redis", "nats"} {
		for _, shape := range []string{"cut", "lapsed", "retired"} {
			t.Run(store+"/"+shape, func(t *testing.T) {
				t.Parallel()
				testWriteBackHonoursPeersMarks(t, store, shape)
			})
		}
	}
}

func testWriteBackHonoursPeersMarks(t *testing.T, store, shape string) {
	grace := 2 * time.Second
	if shape == "cut" {
		grace = 6 * time.Second // room for n1's write-back within it
	}
	f := startLossFarm(t, store, grace)
	n1, n2, g1, g2 := f.ms[0], f.ms[1], f.stores[0], f.stores[1]
	time.Sleep(1200 * time.Millisecond) // past the re-sends asked for at start

	// n2 issues S; both hold it whole, stored, and know the store's
	// generation.
	ids, cs := farmtest.Issue(t, n2, 1)
	id, c := ids[0], cs[0]
	farmtest.Eventually(t, 5*time.Second, "S stored, held by n1, the generation known", func() bool {
		_, held := lookup(n1.Cache, id)
		return held && f.stored(id) && n1.Node.StoreGeneration() != nil && n2.Node.StoreGeneration() != nil
	})

	// n1's bus path freezes; neither node may tell yet that the store
	// lost its data; the store loses it.
	g1.genHeld.Store(true)
	g2.genHeld.Store(true)
	t.Cleanup(func() { g1.genHeld.Store(false); g2.genHeld.Store(false); g2.failing.Store(false) })
	f.proxy.Freeze()
	t.Cleanup(f.proxy.Thaw)
	f.lose()
	if f.stored(id) {
		t.Fatal("the store kept S")
	}

	// The client resumes S on n2, whose cut finds no record: it leaves
	// its mark, or, its store path failing, a retirement past S's grace.
	writes, answered := len(g2.written(id)), g2.answered(id) // S's first write
	const writeErrors = "tlsfarm_farm_store_write_errors_total"
	failed := farmtest.Counter(n2.Node.Metrics(), writeErrors)
	if shape == "retired" {
		g2.failing.Store(true)
	}
	if !tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
		t.Fatal("S did not resume on n2")
	}
	cutAt := time.Now()
	if shape == "retired" {
		farmtest.Eventually(t, 5*time.Second, "n2's write of its cut of S failed", func() bool {
			return farmtest.Counter(n2.Node.Metrics(), writeErrors) > failed
		})
		time.Sleep(time.Until(cutAt.Add(grace + 300*time.Millisecond)))
		g2.failing.Store(false)
	}
	// Not only let go: answered, so it is in the store (under load a
	// write let go may still be on its way).
	farmtest.Eventually(t, 10*time.Second, "n2 wrote its cut of S, the store answered it", func() bool {
		return len(g2.written(id)) > writes && g2.answered(id) > answered
	})
	if f.stored(id) {
		t.Fatal("n2's cut of S put a record in the emptied store")
	}
	if shape == "lapsed" {
		time.Sleep(time.Until(cutAt.Add(grace + 300*time.Millisecond)))
	}

	// n1, deaf to the cut, holds S whole, and writes it back.
	if r, ok := lookup(n1.Cache, id); !ok || time.Until(r.Expires) <= grace {
		t.Fatal("n1 does not hold S whole: it heard of the cut, and the test proves nothing")
	}
	const wb = "tlsfarm_farm_written_back_total"
	g1.genHeld.Store(false)
	farmtest.Eventually(t, 10*time.Second, "n1 wrote its sessions back", func() bool {
		return farmtest.Counter(n1.Node.Metrics(), wb) > 0
	})
	wrote := time.Since(cutAt)
	switch {
	case shape == "cut" && wrote >= grace:
		t.Fatalf("n1 wrote back %v after the cut, past S's grace (%v): the test proves nothing", wrote.Round(time.Millisecond), grace)
	case shape == "cut" && store == "redis":
		if ttl := gatedTTL(t, f.rc, g1.Transport, id); ttl <= 0 || ttl > grace {
			t.Errorf("n1's write-back left S in the store with %v, want it cut to its grace (%v)", ttl.Round(time.Millisecond), grace)
		}
	case shape != "cut" && f.stored(id):
		t.Errorf("n1's write-back put S back in the store, %v after n2's cut (S's grace %v)", wrote.Round(time.Millisecond), grace)
	}

	// Past S's grace, a node that never held S does not resume it.
	time.Sleep(time.Until(cutAt.Add(grace + 300*time.Millisecond)))
	if f.stored(id) {
		t.Error("the store holds S past its grace, from n1's write-back")
	}
	if _, ok := lookup(n1.Cache, id); !ok {
		t.Fatal("n1 let S go: it heard of the cut, and the test did not keep the window open")
	}
	n3 := farmtest.Join(t, "n3", f.name, *f.o)
	farmtest.WaitConnected(t, n3)
	if tlstest.MustDial(t, n3.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
		t.Error("n3 resumed S past its grace, from n1's write-back")
	}
}

// A lossFarm is the two-node farm of the write-back marks test: each
// node's bus on the shared Redis (n1's through a proxy that can be
// frozen), its store apart from it, gated (see gatedStore: its writes
// made to fail, its generation reads held off), on a private Redis or on
// the shared NATS server. lose makes the store lose its data.
type lossFarm struct {
	t      *testing.T
	ms     []*farmtest.Member
	name   string
	o      *farmtest.Options
	stores []*gatedStore
	proxy  *nettest.Proxy
	rc     *redis.Client      // the private Redis's own client (store "redis")
	nstore *natsbus.Transport // n1's store (store "nats")
	lose   func()
}

// startLossFarm starts a lossFarm, its sessions' grace grace, with the
// outage tests' short timeouts and HealInterval 250 ms (a node notices
// the loss soon after its generation reads are let go).
func startLossFarm(t *testing.T, store string, grace time.Duration) *lossFarm {
	t.Helper()
	f := &lossFarm{t: t}
	busPaths := slowBusStorePaths(t, redistest.URL(t), new([]*gatedStore), &f.proxy)
	var srv *redistest.Server
	var natsURL string
	if store == "redis" {
		srv = redistest.Start(t)
	} else {
		natsURL = farmtest.ServerURL(t, "NATS", "TLSFARM_NATS_URL", "nats://127.0.0.1:4222")
	}
	var nstores []*natsbus.Transport
	paths := func(tb testing.TB, farmName string) (transport.Bus, transport.Store) {
		bus, _ := busPaths(tb, farmName)
		g := &gatedStore{}
		f.stores = append(f.stores, g)
		if store == "redis" {
			st, err := redisbus.Open(srv.URL(), farmName)
			if err != nil {
				tb.Fatal(err)
			}
			tb.Cleanup(func() { st.Close() })
			g.Transport = st
			return bus, g
		}
		st, err := natsbus.Open(natsURL, farmName, nil)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { st.Close() })
		tb.Cleanup(func() { natstest.DeleteBuckets(tb, st.Conn(), st.Bucket(), st.RecordBucket()) })
		nstores = append(nstores, st)
		return bus, &gatedNATS{Transport: st, g: g}
	}
	f.o = &farmtest.Options{Mode: farm.Broadcast, NewTransport: paths, WriteThrough: true,
		TweakCache: func(c *session.Config) { c.ResumeGrace = grace },
		Tweak: func(c *farm.Config) {
			c.OpTimeout = time.Second
			c.BreakerCooldown = 500 * time.Millisecond
			c.HealInterval = 250 * time.Millisecond
			c.TallyInterval = -1 // n1 publishes nothing while its bus is frozen
		}}
	f.ms, f.name = farmtest.Start(t, 2, f.o)
	if store == "redis" {
		f.rc = redis.NewClient(&redis.Options{Addr: srv.Addr()})
		t.Cleanup(func() { f.rc.Close() })
		f.lose = func() {
			srv.Kill()
			srv.Restart()
		}
		return f
	}
	f.nstore = nstores[0]
	f.lose = func() { purgeRecords(t, natsURL, f.nstore) }
	return f
}

// stored reports whether the store holds a record of id.
func (f *lossFarm) stored(id session.ID) bool {
	lw := &lateWriteFarm{t: f.t, stores: f.stores, rc: f.rc, nstore: f.nstore}
	return lw.stored(id)
}

// purgeRecords purges the stream that holds the session records (and the
// generation record) of tr's farm on the NATS server at url: the store
// lost them, as a server restarted empty would have.
func purgeRecords(t *testing.T, url string, tr *natsbus.Transport) {
	t.Helper()
	ctx := context.Background()
	native, err := tr.NativeTTL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	name := "KV_" + tr.RecordBucket()
	if native {
		name = "KV_" + tr.Bucket()
	}
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Purge(ctx); err != nil {
		t.Fatal(err)
	}
}
