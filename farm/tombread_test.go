package farm_test

import (
	"cmp"
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/farm/natsbus/natsembed"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/testenv"
	"github.com/tlsfarm/tlsfarm/session"
)

// revokedChains returns the chains c remembers as revoked.
func revokedChains(c *session.Cache) map[uint64]bool {
	m := map[uint64]bool{}
	for chain := range c.Revocations() {
		m[chain] = true
	}
	return m
}

// tombstoneStore is a private server for the tests of the farm's reads of
// its revocations: its transport for each node, a way to fill the set of
// revocations fast, and a count of the server's reads of the set where it
// keeps one (-1 where not).
type tombstoneStore struct {
	open    func(testing.TB, string) (transport.Bus, transport.Store)
	fill    func(t testing.TB, s transport.Store, members [][]byte, until time.Time)
	setRead func(t testing.TB) int64
	// restartEmpty restarts the server without its data.
	restartEmpty func(t testing.TB)
}

// redisTombstoneStore runs a private Redis: the set is filled with
// pipelined ZADDs, and its reads are counted by the server's
// ZREVRANGE calls (made by SetMembers' script; commandstats counts the
// commands scripts make).
func redisTombstoneStore(t testing.TB) *tombstoneStore {
	srv := redistest.Start(t)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { c.Close() })
	return &tombstoneStore{
		open: redisTransport(srv.URL()),
		fill: func(t testing.TB, s transport.Store, members [][]byte, until time.Time) {
			key := s.(*redisbus.Transport).Key(farm.TombstoneKey)
			ctx := context.Background()
			for i := 0; i < len(members); i += 1000 {
				p := c.Pipeline()
				for _, m := range members[i:min(i+1000, len(members))] {
					p.ZAdd(ctx, key, redis.Z{Score: float64(until.UnixMilli()), Member: m})
				}
				if _, err := p.Exec(ctx); err != nil {
					t.Fatal(err)
				}
			}
		},
		setRead: func(t testing.TB) int64 {
			info, err := c.Info(context.Background(), "commandstats").Result()
			if err != nil {
				t.Fatal(err)
			}
			for _, line := range strings.Split(info, "\n") {
				if rest, ok := strings.CutPrefix(line, "cmdstat_zrevrange:calls="); ok {
					n, _ := strconv.ParseInt(rest[:strings.IndexByte(rest, ',')], 10, 64)
					return n
				}
			}
			return 0
		},
		restartEmpty: func(testing.TB) { srv.Kill(); srv.Restart() },
	}
}

// natsFill fills the set with SetAdds, 32 at a time.
func natsFill(t testing.TB, s transport.Store, members [][]byte, until time.Time) {
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for w := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(members); i += 32 {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := s.SetAdd(ctx, farm.TombstoneKey, members[i], until)
				cancel()
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
}

// natsSharedTombstoneStore is the shared NATS server (not built with
// -race, unlike an embedded one, which holds 100,000 members slowly under
// it); the farm's buckets are deleted when the test ends. Its reads of
// the set are not counted, and it is not restarted.
func natsSharedTombstoneStore(t testing.TB) *tombstoneStore {
	return &tombstoneStore{
		open:    natsTransport(farmtest.ServerURL(t, "NATS", "TLSFARM_NATS_URL", "nats://127.0.0.1:4222")),
		fill:    natsFill,
		setRead: func(testing.TB) int64 { return -1 },
	}
}

// natsEmbeddedTombstoneStore runs a private embedded NATS server, which
// restartEmpty restarts on a new store directory.
func natsEmbeddedTombstoneStore(t testing.TB) *tombstoneStore {
	var srv *natsembed.Server
	_, again := testenv.OnFreePort(t, func(port int) (err error) {
		srv, err = natsembed.Start(&natsembed.Config{Port: port, Dir: t.TempDir(), StartTimeout: testenv.StartTimeout})
		return err
	})
	t.Cleanup(func() { srv.Shutdown() })
	url := srv.URL()
	return &tombstoneStore{
		open: func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
			tr, err := natsbus.Open(url, farmName, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { tr.Close() })
			return tr, tr
		},
		fill:         natsFill,
		setRead:      func(testing.TB) int64 { return -1 },
		restartEmpty: func(testing.TB) { srv.Shutdown(); again() },
	}
}

type namedTombstoneStore struct {
	name string
	new  func(testing.TB) *tombstoneStore
	size int // members the full-set test writes (0: transport.MaxSetMembers)
}

// setAdd adds member to the farm's revocations in s.
func setAdd(t testing.TB, s transport.Coordinator, member []byte, until time.Time) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.SetAdd(ctx, farm.TombstoneKey, member, until); err != nil {
		t.Fatal(err)
	}
}

// tombstoneCounters returns the node's reads of the revocations (read
// whole, found unchanged) and the members it opened.
func tombstoneCounters(m *farmtest.Member) (read, unchanged, opened uint64) {
	ss := m.Node.Metrics()
	return farmtest.Counter(ss, "tlsfarm_farm_tombstone_reads_total", "result", "read"),
		farmtest.Counter(ss, "tlsfarm_farm_tombstone_reads_total", "result", "unchanged"),
		farmtest.Counter(ss, "tlsfarm_farm_tombstones_opened_total")
}

// TestTombstonesFullSetSmallOpTimeout: a node with an OpTimeout of 100 ms
// joins a farm whose store holds transport.MaxSetMembers revocations
// (20,000 on NATS, see below): it
// reads and applies them all (a bound of their own, not OpTimeout, which
// they took 1-2 s over before on Redis). Then, heal after heal (every
// 200 ms), the unchanged set is not read again (one short request for its
// version; no ZREVRANGE on Redis) and no member is opened again; a
// revocation added to the store only (no message) is applied at the next
// heal, opening that one member.
func TestTombstonesFullSetSmallOpTimeout(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 100,000 revocations to a private server")
	}
	// NATS with 20,000: a client built with -race reads 100,000 in 10-30 s
	// on a loaded 2-core VM, past tombstoneTimeout; 20,000 still take
	// well over 100 ms.
	for _, st := range []namedTombstoneStore{{"redis", redisTombstoneStore, 0}, {"nats", natsSharedTombstoneStore, 20000}} {
		t.Run(st.name, func(t *testing.T) {
			store := st.new(t)
			o := farmtest.Options{NewTransport: store.open}
			ms, name := farmtest.Start(t, 1, &o)
			n1 := ms[0]
			until := time.Now().Add(time.Hour)
			// One short of the bound: the one added below makes it full.
			size := cmp.Or(st.size, transport.MaxSetMembers)
			members := make([][]byte, size-1)
			for i := range members {
				members[i] = n1.Node.SealTombstone(uint64(i)+1, until)
			}
			store.fill(t, n1.Store, members[:len(members)-1], until)
			// The last through SetAdd: the set has a version.
			setAdd(t, n1.Store, members[len(members)-1], until)
			late := o
			late.Tweak = func(cfg *farm.Config) {
				cfg.OpTimeout = 100 * time.Millisecond
				cfg.HealInterval = 200 * time.Millisecond
			}
			start := time.Now()
			m := farmtest.Join(t, "late", name, late)
			farmtest.Eventually(t, 120*time.Second, "the revocations known", m.Node.RevocationsKnown)
			t.Logf("revocations known %v after Join", time.Since(start))
			if got := len(revokedChains(m.Cache)); got != len(members) {
				t.Fatalf("%d chains revoked, want %d", got, len(members))
			}
			read, unchanged, opened := tombstoneCounters(m)
			if opened != uint64(len(members)) {
				t.Fatalf("%d members opened, want %d", opened, len(members))
			}
			setReads := store.setRead(t)
			farmtest.Eventually(t, time.Minute, "five heals", func() bool {
				_, u, _ := tombstoneCounters(m)
				return u >= unchanged+5
			})
			if r, _, o := tombstoneCounters(m); r != read || o != opened {
				t.Fatalf("unchanged set: read whole %d times more, %d members opened again", r-read, o-opened)
			}
			if n := store.setRead(t); n != setReads {
				t.Fatalf("unchanged set: the server read it %d times more (ZREVRANGE)", n-setReads)
			}
			// A revocation in the store only, as from a node whose
			// message this one missed.
			setAdd(t, n1.Store, n1.Node.SealTombstone(1<<40, until), until)
			farmtest.Eventually(t, time.Minute, "the new revocation applied", func() bool {
				return revokedChains(m.Cache)[1<<40]
			})
			if _, _, o := tombstoneCounters(m); o != opened+1 {
				t.Fatalf("one member added: %d opened, want 1", o-opened)
			}
			r0, u0, _ := tombstoneCounters(m)
			farmtest.Eventually(t, time.Minute, "two heals more", func() bool {
				r, u, _ := tombstoneCounters(m)
				return r+u >= r0+u0+2
			})
			if r, _, _ := tombstoneCounters(m); r != read+1 {
				t.Fatalf("one member added: the set read whole %d times, want once", r-read)
			}
			if n := store.setRead(t); n >= 0 {
				t.Logf("redis: %d ZREVRANGE for the read after the change", n-setReads)
			}
		})
	}
}

// TestTombstonesAfterCoordinatorLoss: the farm's revocations live in a
// Coordinator of their own, which restarts without its data (the session
// records, elsewhere, keep theirs: no node sees a store loss, and none
// writes its revocations back). Revocations added to the new store, as
// many as before the loss, are applied on every node: a set's version is
// new after a loss, never one a node saw before (a counter beside the set,
// back at the same count, would pass for unchanged).
func TestTombstonesAfterCoordinatorLoss(t *testing.T) {
	t.Parallel()
	records := redistest.URL(t)
	for _, st := range []namedTombstoneStore{{"redis", redisTombstoneStore, 0}, {"nats", natsEmbeddedTombstoneStore, 0}} {
		t.Run(st.name, func(t *testing.T) {
			store := st.new(t)
			var coords []transport.Store
			var mu sync.Mutex
			o := farmtest.Options{NewTransport: redisTransport(records), Tweak: func(cfg *farm.Config) {
				_, c := store.open(t, cfg.Farm)
				mu.Lock()
				coords = append(coords, c)
				mu.Unlock()
				cfg.Coord = c
				cfg.HealInterval = 200 * time.Millisecond
			}}
			ms, _ := farmtest.Start(t, 2, &o)
			until := time.Now().Add(time.Hour)
			add := func(first uint64) {
				for i := range uint64(5) {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					err := coords[0].SetAdd(ctx, farm.TombstoneKey, ms[0].Node.SealTombstone(first+i, until), until)
					cancel()
					if err != nil {
						t.Fatal(err)
					}
				}
			}
			applied := func(first uint64) func() bool {
				return func() bool {
					for _, m := range ms {
						got := revokedChains(m.Cache)
						for i := range uint64(5) {
							if !got[first+i] {
								return false
							}
						}
					}
					return true
				}
			}
			add(100)
			farmtest.Eventually(t, 10*time.Second, "the first five applied on both nodes", applied(100))
			_, unchanged, _ := tombstoneCounters(ms[1])
			farmtest.Eventually(t, 10*time.Second, "heals that find the set unchanged", func() bool {
				_, u, _ := tombstoneCounters(ms[1])
				return u >= unchanged+2
			})
			store.restartEmpty(t)
			farmtest.Eventually(t, 20*time.Second, "the new store written to", func() bool {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				return coords[0].SetAdd(ctx, "probe", []byte("p"), time.Now().Add(time.Minute)) == nil
			})
			add(200)
			farmtest.Eventually(t, 10*time.Second, "the five added after the loss applied on both nodes", applied(200))
			for _, m := range ms {
				r, u, o := tombstoneCounters(m)
				t.Logf("%s: %d reads whole, %d unchanged, %d opened", m.Name, r, u, o)
			}
		})
	}
}
