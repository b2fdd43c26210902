package farm_test

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
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

// gatedStore is a real Redis store, on a path of its own (a transport
// apart from the node's bus), whose record writes fail at once while
// failing is set (the store's path is down, the bus's is not), and wait
// while held is set, until it is cleared or their context ends (a slow
// store: the node's later writes queue behind the one in flight).
type gatedStore struct {
	*redisbus.Transport
	failing atomic.Bool
	mu      sync.Mutex
	hold    chan struct{}              // closed when the hold ends; nil: not held
	waiting atomic.Int32               // writes waiting on the hold
	ttls    map[string][]time.Duration // the TTLs written, by key
	dels    map[string]int             // the deletions asked for, by key
	applied map[string]int             // the writes and deletions the store answered, by key

	// landing makes the next write land and then report failure (a
	// write that timed out after the store applied it); the writes after
	// it fail (failing) until the test lets them through.
	landing atomic.Bool

	// genHeld fails reads of the store's generation record: the node
	// cannot tell yet that the store lost its data, so it does not write
	// its sessions back.
	genHeld atomic.Bool

	// readHold, while not nil, holds the reads of readKey (a lookup in
	// flight) until it is closed or their context ends (see holdReads).
	readKey      string
	readHold     chan struct{}
	readsWaiting atomic.Int32
}

// genRead is a read of key through the gate: errGated for the
// generation record while genHeld is set, else read.
func (g *gatedStore) genRead(key string, read func() ([]byte, error)) ([]byte, error) {
	if key == "generation" && g.genHeld.Load() {
		return nil, errGated
	}
	return read()
}

func (g *gatedStore) GetRecord(ctx context.Context, key string) ([]byte, error) {
	g.mu.Lock()
	hold := g.readHold
	if key != g.readKey {
		hold = nil
	}
	g.mu.Unlock()
	if hold != nil {
		g.readsWaiting.Add(1)
		select {
		case <-hold:
		case <-ctx.Done():
		}
		g.readsWaiting.Add(-1)
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
	return g.genRead(key, func() ([]byte, error) { return g.Transport.GetRecord(ctx, key) })
}

// holdReads holds the store's reads of the record of id from now on
// (on), or lets them go (off).
func (g *gatedStore) holdReads(id session.ID, on bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case on && g.readHold == nil:
		g.readKey, g.readHold = "s:"+hex.EncodeToString(id[:]), make(chan struct{})
	case !on && g.readHold != nil:
		close(g.readHold)
		g.readHold = nil
	}
}

// landed reports, after a write that the store applied, the failure of
// a landing write (see landing), and sets the store path failing.
func (g *gatedStore) landed(err error) error {
	if err == nil && g.landing.CompareAndSwap(true, false) {
		g.failing.Store(true)
		return errStoreDown
	}
	return err
}

// noteDeleted counts a deletion of each of keys that the gate let go.
func (g *gatedStore) noteDeleted(keys []string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.dels == nil {
		g.dels = make(map[string]int)
	}
	for _, k := range keys {
		g.dels[k]++
	}
}

// noteApplied counts, for each of keys, a write or deletion that the
// store answered (err nil): it is in the store now.
func (g *gatedStore) noteApplied(keys []string, err error) {
	if err != nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.applied == nil {
		g.applied = make(map[string]int)
	}
	for _, k := range keys {
		g.applied[k]++
	}
}

// touched reports whether the store answered a write or a deletion of
// the record of id that the gate let go: the store applied it, and a
// read now sees it. Not as soon as the gate let it go: under load the
// write may still be on its way then (a cut read back whole, 20 ms
// after n1's first write, because it had not reached Redis yet).
func (g *gatedStore) touched(id session.ID) bool { return g.answered(id) > 0 }

// answered returns how many writes and deletions of the record of id the
// store answered (see touched).
func (g *gatedStore) answered(id session.ID) int {
	k := "s:" + hex.EncodeToString(id[:])
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.applied[k]
}

var errStoreDown = errors.New("store path down (test)")

func (g *gatedStore) gate(ctx context.Context) error {
	if g.failing.Load() {
		return errStoreDown
	}
	g.mu.Lock()
	hold := g.hold
	g.mu.Unlock()
	if hold == nil {
		return nil
	}
	g.waiting.Add(1)
	defer g.waiting.Add(-1)
	select {
	case <-hold:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// setHeld holds the store's writes (on) or lets them go (off).
func (g *gatedStore) setHeld(on bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case on && g.hold == nil:
		g.hold = make(chan struct{})
	case !on && g.hold != nil:
		close(g.hold)
		g.hold = nil
	}
}

func (g *gatedStore) PutRecords(ctx context.Context, items ...transport.Item) error {
	if err := g.gate(ctx); err != nil {
		return err
	}
	g.mu.Lock()
	if g.ttls == nil {
		g.ttls = make(map[string][]time.Duration)
	}
	for _, it := range items {
		g.ttls[it.Key] = append(g.ttls[it.Key], it.TTL)
	}
	g.mu.Unlock()
	err := g.Transport.PutRecords(ctx, items...)
	keys := make([]string, len(items))
	for i, it := range items {
		keys[i] = it.Key
	}
	g.noteApplied(keys, err)
	return g.landed(err)
}

// written returns the TTLs of the writes of the record of id so far.
func (g *gatedStore) written(id session.ID) []time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.ttls["s:"+hex.EncodeToString(id[:])])
}

func (g *gatedStore) DeleteRecords(ctx context.Context, keys ...string) error {
	if err := g.gate(ctx); err != nil {
		return err
	}
	g.noteDeleted(keys)
	err := g.Transport.DeleteRecords(ctx, keys...)
	g.noteApplied(keys, err)
	return err
}

// gatedStorePaths opens, for each member, a Redis bus at url and, apart
// from it, a Redis store at url wrapped in a gatedStore, which it appends
// to *stores (in the order the members join).
func gatedStorePaths(url string, stores *[]*gatedStore) func(testing.TB, string) (transport.Bus, transport.Store) {
	return func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
		bus, _ := redisTransport(url)(t, farmName)
		st, err := redisbus.Open(url, farmName)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		g := &gatedStore{Transport: st}
		*stores = append(*stores, g)
		return bus, g
	}
}

// gatedTTL returns what is left of the stored record of id, or 0 if the
// store does not hold it.
func gatedTTL(t *testing.T, rc *redis.Client, st *redisbus.Transport, id session.ID) time.Duration {
	t.Helper()
	ttl, err := rc.PTTL(context.Background(), st.RecordKey("s:"+hex.EncodeToString(id[:]))).Result()
	if err != nil {
		t.Fatal(err)
	}
	return max(ttl, 0)
}

// TestLateSessionWriteKeepsPeersCut: n1's store path is slow (its store
// writes wait; the bus's path works), so a session S that n1 issues is
// written late — queued behind a write in flight, or the write in flight
// itself — while the bus brings S to n2 at once. The client resumes S on
// n2, which cuts S to its grace everywhere: n2's cut of the store's
// record finds none yet (a cut only shortens a record that is there), and
// n1 cuts its copy when n2's child of S arrives. Once n1's store answers,
// the store must hold S as the farm now knows it, cut, not whole as n1
// first had it: whole, S would outlive its grace in the store, and a node
// without a copy (n3, joining later) would load it and resume it. A write
// that waited in the queue must not write S whole even for a moment; one
// in flight when the cut arrived is followed by the cut.
// Broadcast mode: in store-only mode no peer learns of S before n1 has
// written it.
func TestLateSessionWriteKeepsPeersCut(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		inFlight bool // S's is the write held, not one queued behind it
	}{{"queued", false}, {"in-flight", true}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			const grace = 3 * time.Second
			url := redistest.URL(t)
			var stores []*gatedStore
			o := &farmtest.Options{Mode: farm.Broadcast, NewTransport: gatedStorePaths(url, &stores),
				TweakCache: func(c *session.Config) { c.ResumeGrace = grace },
				Tweak:      func(c *farm.Config) { c.OpTimeout = 20 * time.Second }} // n1's held write must not time out
			ms, name := farmtest.Start(t, 2, o)
			n1, n2 := ms[0], ms[1]
			g := stores[0]
			rc := redis.NewClient(mustParseRedis(t, url))
			defer rc.Close()
			// Past the re-sends the nodes' subscriptions coming up may
			// ask for: a re-send of n2's cut after n1's write would
			// hide what the write did.
			time.Sleep(1200 * time.Millisecond)

			g.setHeld(true)
			defer g.setHeld(false)
			if !tc.inFlight {
				// A first session's write, held in flight.
				tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, &tlstest.FrozenCache{}))
				farmtest.Eventually(t, 5*time.Second, "n1's first store write is held", func() bool { return g.waiting.Load() > 0 })
			}
			ids := farmtest.HandshakeSessions(n1.Cache)
			c := &tlstest.FrozenCache{}
			tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, c))
			id := ids()[0]
			if tc.inFlight {
				farmtest.Eventually(t, 5*time.Second, "n1's store write of S is held", func() bool { return g.waiting.Load() > 0 })
			}
			farmtest.Eventually(t, 5*time.Second, "n2 holds S", func() bool { _, ok := lookup(n2.Cache, id); return ok })
			kids := farmtest.HandshakeSessions(n2.Cache)
			if !tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
				t.Fatal("S did not resume on n2")
			}
			// n2 writes its cut of S in the batch of S's child: once the
			// child is stored, the cut found no record to cut.
			farmtest.Eventually(t, 5*time.Second, "n2 stored S's child", func() bool {
				return len(kids()) > 0 && gatedTTL(t, rc, g.Transport, kids()[0]) > 0
			})
			farmtest.Eventually(t, 5*time.Second, "n1 cut its copy of S", func() bool {
				r, ok := lookup(n1.Cache, id)
				return ok && time.Until(r.Expires) <= grace
			})

			g.setHeld(false)
			farmtest.Eventually(t, 10*time.Second, "n1 wrote S to the store", func() bool {
				return gatedTTL(t, rc, g.Transport, id) > 0
			})
			deadline := time.Now().Add(2 * time.Second)
			for ttl := gatedTTL(t, rc, g.Transport, id); ttl > grace; ttl = gatedTTL(t, rc, g.Transport, id) {
				if time.Now().After(deadline) {
					t.Fatalf("n1 wrote S whole after the farm cut it: the store keeps it %v, past its grace (%v)", ttl.Round(time.Second), grace)
				}
				time.Sleep(20 * time.Millisecond)
			}
			if ttls := g.written(id); !tc.inFlight && slices.ContainsFunc(ttls, func(ttl time.Duration) bool { return ttl > grace }) {
				t.Errorf("n1 wrote S from its queue whole after the farm cut it (TTLs written: %v), if only for a moment", ttls)
			}

			// Past S's grace, a node that never held it does not resume it.
			time.Sleep(grace + 200*time.Millisecond)
			n3 := farmtest.Join(t, "n3", name, *o)
			farmtest.WaitConnected(t, n3)
			if tlstest.MustDial(t, n3.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
				t.Fatal("n3 resumed S past its grace, from the record n1 wrote late")
			}
		})
	}
}

func mustParseRedis(t *testing.T, url string) *redis.Options {
	t.Helper()
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	return opts
}
