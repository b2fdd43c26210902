package farm_test

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

var errSubscriptionCut = errors.New("subscription cut (test)")

// cutTransport is a Redis transport (bus and store in one value) whose
// subscription the test can cut and restore: Cut ends the real
// subscription (what is published meanwhile is lost, as pub/sub loses it)
// and reports it down; Restore lets it subscribe again. Everything else
// keeps working, unless writesDown is set: then the store's writes fail
// (its reads still work). With a dialer, the node's bus is NATS, not this
// transport, and Cut and Restore cut and restore its NATS connection.
type cutTransport struct {
	*redisbus.Transport
	writesDown atomic.Bool
	multiDown  atomic.Bool // GetRecords fails
	dialer     *cutDialer  // the NATS bus's, if the bus is NATS

	mu       sync.Mutex
	cancel   context.CancelFunc // ends the subscription in place
	restored chan struct{}      // non-nil while cut
}

func (c *cutTransport) Subscribe(ctx context.Context, deliver func([]byte), state func(bool, error)) error {
	for {
		c.mu.Lock()
		if wait := c.restored; wait != nil {
			c.mu.Unlock()
			state(false, errSubscriptionCut)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-wait:
			}
			continue
		}
		sctx, cancel := context.WithCancel(ctx)
		c.cancel = cancel
		c.mu.Unlock()
		err := c.Transport.Subscribe(sctx, deliver, state)
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.mu.Lock()
		cut := c.restored != nil
		c.mu.Unlock()
		if !cut {
			return err
		}
	}
}

// Cut ends the subscription until Restore.
func (c *cutTransport) Cut() {
	if c.dialer != nil {
		c.dialer.Cut()
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.restored = make(chan struct{})
	if c.cancel != nil {
		c.cancel()
	}
}

// Restore lets the subscription come back.
func (c *cutTransport) Restore() {
	if c.dialer != nil {
		c.dialer.Restore()
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	close(c.restored)
	c.restored = nil
}

// cutDialer dials one node's NATS connection (nats.SetCustomDialer). Cut
// closes the connections it made and refuses new ones until Restore: the
// connection is lost (the server drops its subscription, and what is
// published meanwhile never reaches the node) and the client keeps trying
// to reconnect, as it would through a network partition, while every
// other node's connection stays up.
type cutDialer struct {
	mu    sync.Mutex
	down  bool
	conns []net.Conn
}

func (d *cutDialer) Dial(network, address string) (net.Conn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.down {
		return nil, errSubscriptionCut
	}
	c, err := net.DialTimeout(network, address, 2*time.Second)
	if err != nil {
		return nil, err
	}
	d.conns = append(d.conns, c)
	return c, nil
}

// Cut closes the connections and refuses new ones until Restore.
func (d *cutDialer) Cut() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.down = true
	for _, c := range d.conns {
		c.Close()
	}
	d.conns = nil
}

// Restore lets the client connect again.
func (d *cutDialer) Restore() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.down = false
}

var errWritesDown = errors.New("store writes down (test)")

func (c *cutTransport) GetRecords(ctx context.Context, keys ...string) ([][]byte, error) {
	if c.multiDown.Load() {
		return nil, errWritesDown
	}
	return c.Transport.GetRecords(ctx, keys...)
}

func (c *cutTransport) PutRecords(ctx context.Context, items ...transport.Item) error {
	if c.writesDown.Load() {
		return errWritesDown
	}
	return c.Transport.PutRecords(ctx, items...)
}

func (c *cutTransport) PutAndPublish(ctx context.Context, items []transport.Item, dels []string, msgs [][]byte) error {
	if c.writesDown.Load() {
		return errWritesDown
	}
	return c.Transport.PutAndPublish(ctx, items, dels, msgs)
}

// singleGets is a cutTransport that is no transport.RecordGetter (the
// field hides the method): a node reads its records one GetRecord at a
// time.
type singleGets struct {
	*cutTransport
	GetRecords struct{}
}

// cutOptions vary cutFarm's nodes.
type cutOptions struct {
	single bool      // wrap each transport in singleGets
	lazy   bool      // farm.Config.LazyPeers
	mode   farm.Mode // farm.Config.Mode (Broadcast unless set)
	nats   bool      // the bus is NATS (the machine's server), each node's connection cut by its cutDialer; the store stays Redis
}

// cutFarm starts a farm of n nodes (broadcast, unless o.mode says otherwise) over a Redis server of its own,
// each on a cutTransport, with the given resumption grace.
func cutFarm(t *testing.T, n int, grace time.Duration, o cutOptions) ([]*farmtest.Member, []*cutTransport, *redis.Client) {
	srv := redistest.Start(t)
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { rc.Close() })
	var natsURL string
	if o.nats {
		natsURL = farmtest.ServerURL(t, "NATS", "TLSFARM_NATS_URL", "nats://127.0.0.1:4222")
	}
	var mu sync.Mutex
	var cuts []*cutTransport
	ms, _ := farmtest.Start(t, n, &farmtest.Options{Mode: o.mode,
		NewTransport: func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
			var c *cutTransport
			var bus transport.Bus
			if o.nats {
				d := &cutDialer{}
				var store transport.Store
				bus, store = natsBusRedisStoreWith(natsURL, srv.URL(),
					&natsbus.Options{NATS: []nats.Option{nats.SetCustomDialer(d)}})(t, farmName)
				c = &cutTransport{Transport: store.(*redisbus.Transport), dialer: d}
			} else {
				tr, err := redisbus.Open(srv.URL(), farmName)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { tr.Close() })
				c = &cutTransport{Transport: tr}
				bus = c
			}
			mu.Lock()
			cuts = append(cuts, c) // Start joins n1, n2, ... in turn
			mu.Unlock()
			if o.single {
				s := singleGets{cutTransport: c}
				if _, ok := any(s).(transport.RecordGetter); ok {
					t.Fatal("singleGets is a RecordGetter")
				}
				if o.nats {
					return bus, s
				}
				return s, s
			}
			return bus, c
		},
		TweakCache: func(c *session.Config) { c.ResumeGrace = grace },
		Tweak: func(c *farm.Config) {
			c.OpTimeout = 500 * time.Millisecond
			c.LazyPeers = o.lazy
		}})
	return ms, cuts, rc
}

// recordTTL returns the TTL left to the record of session id in the Redis
// behind c, and whether it is there.
func recordTTL(t *testing.T, rc *redis.Client, c *cutTransport, id session.ID) (time.Duration, bool) {
	t.Helper()
	ttl, err := rc.PTTL(t.Context(), c.RecordKey("s:"+hex.EncodeToString(id[:]))).Result()
	if err != nil {
		t.Fatal(err)
	}
	return ttl, ttl > 0
}

func reconciles(m *farmtest.Member, result string) uint64 {
	return farmtest.Counter(m.Node.Metrics(), "tlsfarm_farm_reconcile_total", "result", result)
}

// TestReconcileAfterSubscriptionOutage: while n2's bus subscription is down
// (its store works), n1 retires one session and resumes another (a grace
// cut of its parent), and n2 hears of neither; n1 then closes (so that no
// re-send can tell n2: see retirerGone). Once n2 subscribes again it
// checks its cache against the store: it refuses the retired session, cuts
// the parent to its grace (and refuses it after), and keeps a session the
// farm neither retired nor cut.
// With a store that reads many records at once (Redis MGET) and with one
// that does not, with lazy peers, and in store-only mode (where n2 holds
// n1's sessions because it loaded them from the store, and n1's grace cut
// reaches it as a cut message, which it misses too). And with a NATS bus
// (the store still Redis), whose outage is n2's NATS connection lost: the
// client reconnects and resubscribes by itself.
func TestReconcileAfterSubscriptionOutage(t *testing.T) {
	t.Parallel()
	for name, o := range map[string]cutOptions{
		"multi-get":   {},
		"single-gets": {single: true},
		"lazy-peers":  {lazy: true}, // n2 holds n1's sessions as received
		"store-only":  {mode: farm.StoreOnly},
		"nats-bus":    {nats: true},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			testReconcileAfterSubscriptionOutage(t, o)
		})
	}
}

// retirerGone closes n1's node, the retirer, before n2's path returns: n1
// would re-send its retirements and cuts when n2 asks (Node.sent), and they
// would reach n2 before its reconcile; with n1 gone only the store can tell
// n2, so the reconcile is what these tests see at work.
func retirerGone(t *testing.T, n1 *farmtest.Member) {
	t.Helper()
	if err := n1.Node.Close(); err != nil {
		t.Fatal(err)
	}
}

// holds reports whether m holds the session id: in its cache or, with lazy
// peers, as received.
func holds(m *farmtest.Member, id session.ID, lazy bool) bool {
	if lazy {
		return m.Node.HoldsPending(id)
	}
	_, ok := lookup(m.Cache, id)
	return ok
}

func testReconcileAfterSubscriptionOutage(t *testing.T, o cutOptions) {
	const grace = 2 * time.Second
	ms, cuts, rc := cutFarm(t, 2, grace, o)
	n1, n2 := ms[0], ms[1]
	ids, cs := farmtest.Issue(t, n1, 3)
	retired, parent, kept := ids[0], ids[1], ids[2]
	retiredC, parentC, keptC := cs[0], cs[1], cs[2]
	if o.mode == farm.StoreOnly {
		// No copies are sent: n2 loads each session from the store, as
		// a lookup for a handshake would (a handshake would cut it).
		for _, id := range []session.ID{retired, parent, kept} {
			waitStored(t, n1, id)
			if !n2.Node.LoadFromStore(t.Context(), id) {
				t.Fatalf("n2 did not load session %x from the store", id[:4])
			}
		}
	}
	farmtest.Eventually(t, 5*time.Second, "n2 holds n1's sessions, and the store too", func() bool {
		for _, id := range []session.ID{retired, parent, kept} {
			if !holds(n2, id, o.lazy) {
				return false
			}
		}
		return true
	})
	for _, id := range []session.ID{retired, parent, kept} {
		waitStored(t, n1, id)
	}
	fullLife, _ := lookup(n2.Cache, parent)

	cuts[1].Cut()
	farmtest.Eventually(t, 5*time.Second, "n2's subscription down", func() bool { return !n2.Node.Connected() })
	if !n1.Cache.Retire(retired, session.OriginAPI) {
		t.Fatal("n1 did not hold the session to retire")
	}
	if !tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, parentC)).DidResume {
		t.Fatal("the parent did not resume on n1")
	}
	cutBy := time.Now().Add(grace)
	farmtest.Eventually(t, 5*time.Second, "the retirement and the cut in the store", func() bool {
		if _, ok := recordTTL(t, rc, cuts[0], retired); ok {
			return false
		}
		ttl, ok := recordTTL(t, rc, cuts[0], parent)
		return ok && ttl <= grace
	})
	// n2 heard of neither: its copies are as they were.
	if !holds(n2, retired, o.lazy) || !holds(n2, parent, o.lazy) {
		t.Fatal("n2 dropped the retired session or the parent while its subscription was down")
	}
	if r, _ := lookup(n2.Cache, parent); !o.lazy && !r.Expires.Equal(fullLife.Expires) {
		t.Fatal("n2 cut the parent while its subscription was down")
	}

	// The parent's record lasts its grace: a pass that reads it later
	// finds it gone and retires the parent rather than cut it.
	parentTTL, ok := recordTTL(t, rc, cuts[0], parent)
	if !ok {
		t.Fatal("the parent's record left the store before its grace ended")
	}
	parentGone := time.Now().Add(parentTTL)
	retirerGone(t, n1)
	cuts[1].Restore()
	farmtest.Eventually(t, 10*time.Second, "n2 reconciled its cache", func() bool {
		return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_reconciles_total", "result", "done") >= 1
	})
	reconciled := time.Now()
	if holds(n2, retired, o.lazy) {
		t.Fatal("n2 still holds the retired session")
	}
	if o.lazy && holds(n2, parent, o.lazy) {
		t.Fatal("n2 still holds the parent at its full lifetime, as received")
	}
	if r, ok := lookup(n2.Cache, parent); ok && r.Expires.After(cutBy) {
		t.Fatalf("n2 holds the parent until %v, after its grace (%v)", r.Expires, cutBy)
	}
	if !holds(n2, kept, o.lazy) {
		t.Fatal("n2 lost a session the farm neither retired nor cut")
	}
	if r, ok := lookup(n2.Cache, kept); !o.lazy && (!ok || !r.Expires.After(time.Now().Add(time.Minute))) {
		t.Fatal("n2 cut a session the farm neither retired nor cut")
	}
	if got := reconciles(n2, "cut"); got > 1 {
		t.Fatalf("reconcile cut %d sessions, want at most 1", got)
	}
	wantRetired, wantCut := uint64(1), uint64(1)
	if !reconciled.Before(parentGone) {
		// The pass may have come after the parent's record expired
		// (a 2 s delay planted before each pass): the parent was cut
		// or retired.
		wantRetired += 1 - reconciles(n2, "cut")
		wantCut = reconciles(n2, "cut")
		t.Logf("n2's pass ended after the parent's grace: it cut %d, retired %d", reconciles(n2, "cut"), reconciles(n2, "retired"))
	}
	if got := reconciles(n2, "retired"); got != wantRetired {
		t.Fatalf("reconcile retired %d sessions, want %d", got, wantRetired)
	}
	if got := reconciles(n2, "cut"); got != wantCut {
		t.Fatalf("reconcile cut %d sessions, want %d", got, wantCut)
	}
	if tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, retiredC)).DidResume {
		farmtest.LogStats(t, ms)
		t.Fatal("n2 resumed the retired session after its subscription returned")
	}
	farmtest.Eventually(t, grace+5*time.Second, "the parent's grace is over", func() bool { return time.Now().After(cutBy) })
	if tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, parentC)).DidResume {
		farmtest.LogStats(t, ms)
		t.Fatal("n2 resumed the cut parent after its grace")
	}
	if !tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, keptC)).DidResume {
		farmtest.LogStats(t, ms)
		t.Fatal("n2 did not resume a session the farm neither retired nor cut")
	}
}

// TestReconcileKeepsUnwrittenSessions: a session n2 issued while its
// subscription was down and its store writes failed is in no store when
// the subscription returns; the reconcile must not take it for retired.
// Once the writes work, it is written, and resumes on n1.
func TestReconcileKeepsUnwrittenSessions(t *testing.T) {
	t.Parallel()
	ms, cuts, _ := cutFarm(t, 2, 5*time.Second, cutOptions{})
	n1, n2 := ms[0], ms[1]
	ids := farmtest.NewSessions(n2.Cache)

	cuts[1].Cut()
	farmtest.Eventually(t, 5*time.Second, "n2's subscription down", func() bool { return !n2.Node.Connected() })
	cuts[1].writesDown.Store(true)
	own := &tlstest.FrozenCache{}
	tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, own))
	id := ids()[0]
	farmtest.Eventually(t, 5*time.Second, "n2 kept its session for later", func() bool {
		return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_backlog_length") >= 1
	})

	cuts[1].Restore()
	farmtest.Eventually(t, 10*time.Second, "n2 reconciled its cache", func() bool {
		return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_reconciles_total", "result", "done") >= 1
	})
	if _, ok := lookup(n2.Cache, id); !ok {
		t.Fatal("the reconcile retired n2's own session, not written yet")
	}
	if got := reconciles(n2, "retired"); got != 0 {
		t.Fatalf("reconcile retired %d sessions, want 0", got)
	}
	if got := reconciles(n2, "skipped"); got < 1 {
		t.Fatalf("reconcile skipped %d sessions, want at least 1", got)
	}

	cuts[1].writesDown.Store(false)
	waitStored(t, n2, id)
	if !tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, own)).DidResume {
		farmtest.LogStats(t, ms)
		t.Fatal("n2's session, kept through the reconcile, did not resume on n1")
	}
}

// TestLazyPeerRefusesRetired: with lazy peers, a retirement that reaches n2
// over the bus drops the session n2 holds as received, so that n2 does not
// resume it.
func TestLazyPeerRefusesRetired(t *testing.T) {
	t.Parallel()
	ms, _, _ := cutFarm(t, 2, 5*time.Second, cutOptions{lazy: true})
	n1, n2 := ms[0], ms[1]
	ids := farmtest.NewSessions(n1.Cache)
	c := &tlstest.FrozenCache{}
	tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, c))
	id := ids()[0]
	farmtest.Eventually(t, 5*time.Second, "n2 holds n1's session as received", func() bool { return n2.Node.HoldsPending(id) })
	if !n1.Cache.Retire(id, session.OriginAPI) {
		t.Fatal("n1 did not hold the session to retire")
	}
	farmtest.Eventually(t, 5*time.Second, "n2 heard of the retirement", func() bool {
		return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_lifecycle_total", "event", "retire_received") >= 1
	})
	if tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
		farmtest.LogStats(t, ms)
		t.Fatal("n2 resumed, from what it held as received, a session retired on n1")
	}
}

// TestReconcilePages: a reconcile reads the store a page at a time (here 4
// records a page, 14 sessions): it checks every session, retires exactly
// those retired meanwhile, wherever they fall, and keeps the others. The
// retirer closes before n2's path returns (retirerGone).
func TestReconcilePages(t *testing.T) {
	t.Parallel()
	ms, cuts, _ := cutFarm(t, 2, 5*time.Second, cutOptions{})
	n1, n2 := ms[0], ms[1]
	n2.Node.SetReconcilePage(4)
	ids := farmtest.NewSessions(n1.Cache)
	const total = 14
	for range total {
		tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, &tlstest.FrozenCache{}))
	}
	all := ids()
	farmtest.Eventually(t, 5*time.Second, "n2 holds n1's sessions", func() bool {
		for _, id := range all {
			if _, ok := lookup(n2.Cache, id); !ok {
				return false
			}
		}
		return true
	})
	for _, id := range all {
		waitStored(t, n1, id)
	}
	cuts[1].Cut()
	farmtest.Eventually(t, 5*time.Second, "n2's subscription down", func() bool { return !n2.Node.Connected() })
	retired := map[session.ID]bool{}
	for i, id := range all {
		if i%3 == 1 {
			if !n1.Cache.Retire(id, session.OriginAPI) {
				t.Fatal("n1 did not hold a session to retire")
			}
			retired[id] = true
		}
	}
	farmtest.Eventually(t, 5*time.Second, "the retirements in the store", func() bool {
		for id := range retired {
			if _, err := n1.Store.GetRecord(context.Background(), "s:"+hex.EncodeToString(id[:])); !errors.Is(err, transport.ErrNotFound) {
				return false
			}
		}
		return true
	})
	retirerGone(t, n1)
	cuts[1].Restore()
	farmtest.Eventually(t, 10*time.Second, "n2 reconciled its cache", func() bool {
		return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_reconciles_total", "result", "done") >= 1
	})
	for _, id := range all {
		if _, ok := lookup(n2.Cache, id); ok == retired[id] {
			t.Fatalf("n2 holds session %x: %v; retired on n1: %v", id[:4], ok, retired[id])
		}
	}
	if got := reconciles(n2, "checked"); got != total {
		t.Fatalf("reconcile checked %d sessions, want %d", got, total)
	}
	if got := reconciles(n2, "retired"); got != uint64(len(retired)) {
		t.Fatalf("reconcile retired %d sessions, want %d", got, len(retired))
	}
}

// TestReconcileRetriesAfterStoreError: a pass whose store reads fail is
// counted and tried again, and the retry retires what the farm retired
// (the retirer closed before: retirerGone).
func TestReconcileRetriesAfterStoreError(t *testing.T) {
	t.Parallel()
	ms, cuts, _ := cutFarm(t, 2, 5*time.Second, cutOptions{})
	n1, n2 := ms[0], ms[1]
	ids := farmtest.NewSessions(n1.Cache)
	c := &tlstest.FrozenCache{}
	tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, c))
	id := ids()[0]
	farmtest.Eventually(t, 5*time.Second, "n2 holds n1's session", func() bool {
		_, ok := lookup(n2.Cache, id)
		return ok
	})
	waitStored(t, n1, id)
	cuts[1].Cut()
	farmtest.Eventually(t, 5*time.Second, "n2's subscription down", func() bool { return !n2.Node.Connected() })
	n1.Cache.Retire(id, session.OriginAPI)
	farmtest.Eventually(t, 5*time.Second, "the retirement in the store", func() bool {
		_, err := n1.Store.GetRecord(context.Background(), "s:"+hex.EncodeToString(id[:]))
		return errors.Is(err, transport.ErrNotFound)
	})
	retirerGone(t, n1)
	cuts[1].multiDown.Store(true)
	cuts[1].Restore()
	farmtest.Eventually(t, 10*time.Second, "n2's reconcile failed", func() bool {
		return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_reconciles_total", "result", "failed") >= 1
	})
	if _, ok := lookup(n2.Cache, id); !ok {
		t.Fatal("n2 dropped the session though its reconcile failed")
	}
	cuts[1].multiDown.Store(false)
	farmtest.Eventually(t, 10*time.Second, "n2's reconcile retried and done", func() bool {
		return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_reconciles_total", "result", "done") >= 1
	})
	if _, ok := lookup(n2.Cache, id); ok {
		t.Fatal("n2 still holds the retired session after the retry")
	}
	if tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
		t.Fatal("n2 resumed the retired session")
	}
}

// TestReconcileGivesUpOnStoreLoss: a store that lost its data while n2's
// subscription was down (flushed) holds no record of n2's sessions, but
// that says nothing of retirements: n2 gives the reconcile up and keeps
// them.
func TestReconcileGivesUpOnStoreLoss(t *testing.T) {
	t.Parallel()
	ms, cuts, rc := cutFarm(t, 2, 5*time.Second, cutOptions{})
	n1, n2 := ms[0], ms[1]
	ids := farmtest.NewSessions(n1.Cache)
	tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, &tlstest.FrozenCache{}))
	id := ids()[0]
	farmtest.Eventually(t, 5*time.Second, "n2 holds n1's session and knows the store's generation", func() bool {
		_, ok := lookup(n2.Cache, id)
		return ok && n2.Node.StoreGeneration() != nil
	})
	waitStored(t, n1, id)
	cuts[1].Cut()
	farmtest.Eventually(t, 5*time.Second, "n2's subscription down", func() bool { return !n2.Node.Connected() })
	if err := rc.FlushAll(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	cuts[1].Restore()
	passes := func(result string) uint64 {
		return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_reconciles_total", "result", result)
	}
	farmtest.Eventually(t, 10*time.Second, "n2's reconcile ended", func() bool { return passes("store_lost")+passes("done") >= 1 })
	if _, ok := lookup(n2.Cache, id); !ok {
		t.Fatal("n2 retired a session because the store lost its data")
	}
	if passes("store_lost") != 1 || passes("done") != 0 {
		t.Fatalf("reconciles: %d given up, %d done; want 1, 0", passes("store_lost"), passes("done"))
	}
	if got := reconciles(n2, "retired"); got != 0 {
		t.Fatalf("reconcile retired %d sessions, want 0", got)
	}
}
