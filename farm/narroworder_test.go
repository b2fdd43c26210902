package farm_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
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

// slowBusStorePaths is gatedStorePaths with the first member's bus behind
// a proxy (returned through *proxy): its bus path can be frozen, its
// messages held both ways, while its store path and every other member's
// paths work.
func slowBusStorePaths(t *testing.T, url string, stores *[]*gatedStore, proxy **nettest.Proxy) func(testing.TB, string) (transport.Bus, transport.Store) {
	addr := strings.TrimPrefix(url, "redis://")
	if i := strings.IndexByte(addr, '/'); i >= 0 {
		addr = addr[:i]
	}
	return func(tb testing.TB, farmName string) (transport.Bus, transport.Store) {
		busURL := url
		if *proxy == nil {
			*proxy = nettest.NewProxy(t, addr)
			busURL = strings.Replace(url, addr, (*proxy).Addr, 1)
		}
		bus, err := redisbus.Open(busURL, farmName)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { bus.Close() })
		st, err := redisbus.Open(url, farmName)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { st.Close() })
		g := &gatedStore{Transport: st}
		*stores = append(*stores, g)
		return bus, g
	}
}

// lateWrite is the narrow order two tests share: n1 issues S, whose store
// write is held, while the bus brings S to n2 at once; with n1's bus path
// frozen, the client resumes S on n2, whose cut of the store's record
// finds none yet and whose child carries the cut; then n1's write of S
// lands whole. startLateWrite returns there, n1's bus path still frozen.
type lateWrite struct {
	o      *farmtest.Options
	name   string
	n1, n2 *farmtest.Member
	g      *gatedStore
	proxy  *nettest.Proxy
	thawed bool
	rc     *redis.Client
	c      *tlstest.FrozenCache
	id     session.ID
	cutAt  time.Time // when n2 resumed S
}

func startLateWrite(t *testing.T, grace time.Duration, tweak func(*farm.Config)) *lateWrite {
	t.Helper()
	url := redistest.URL(t)
	var stores []*gatedStore
	w := &lateWrite{c: &tlstest.FrozenCache{}}
	w.o = &farmtest.Options{Mode: farm.Broadcast, NewTransport: slowBusStorePaths(t, url, &stores, &w.proxy),
		TweakCache: func(c *session.Config) { c.ResumeGrace = grace },
		Tweak: func(c *farm.Config) {
			c.OpTimeout = 10 * time.Second // n1's held write must not time out
			c.TallyInterval = -1           // n1 publishes nothing while its bus is frozen
			if tweak != nil {
				tweak(c)
			}
		}}
	ms, name := farmtest.Start(t, 2, w.o)
	w.name, w.n1, w.n2 = name, ms[0], ms[1]
	w.g = stores[0]
	w.rc = redis.NewClient(mustParseRedis(t, url))
	t.Cleanup(func() { w.rc.Close() })
	time.Sleep(1200 * time.Millisecond) // past the re-sends asked for at start

	w.g.setHeld(true)
	t.Cleanup(func() { w.g.setHeld(false) })
	ids := farmtest.HandshakeSessions(w.n1.Cache)
	tlstest.MustDial(t, w.n1.Server.Addr, farmtest.Client(tls.VersionTLS13, w.c))
	w.id = ids()[0]
	farmtest.Eventually(t, 5*time.Second, "n1's store write of S is held", func() bool { return w.g.waiting.Load() > 0 })
	farmtest.Eventually(t, 5*time.Second, "n2 holds S", func() bool { _, ok := lookup(w.n2.Cache, w.id); return ok })

	w.proxy.Freeze()
	t.Cleanup(func() {
		if !w.thawed {
			w.proxy.Thaw()
		}
	})
	kids := farmtest.HandshakeSessions(w.n2.Cache)
	if !tlstest.MustDial(t, w.n2.Server.Addr, farmtest.Client(tls.VersionTLS13, w.c)).DidResume {
		t.Fatal("S did not resume on n2")
	}
	w.cutAt = time.Now()
	farmtest.Eventually(t, 5*time.Second, "n2 stored S's child", func() bool {
		return len(kids()) > 0 && gatedTTL(t, w.rc, w.g.Transport, kids()[0]) > 0
	})

	w.g.setHeld(false)
	farmtest.Eventually(t, 5*time.Second, "n1 wrote S to the store", func() bool {
		return gatedTTL(t, w.rc, w.g.Transport, w.id) > 0
	})
	return w
}

// thaw lets n1's bus path go.
func (w *lateWrite) thaw() {
	w.proxy.Thaw()
	w.thawed = true
}

// noResume checks that S resumes neither on n2, whose cut copy has lapsed,
// nor on n3, a node joining now.
func (w *lateWrite) noResume(t *testing.T) {
	t.Helper()
	if tlstest.MustDial(t, w.n2.Server.Addr, farmtest.Client(tls.VersionTLS13, w.c)).DidResume {
		t.Error("n2 resumed S past its grace cut, from the record n1 wrote whole")
	}
	n3 := farmtest.Join(t, "n3", w.name, *w.o)
	farmtest.WaitConnected(t, n3)
	if tlstest.MustDial(t, n3.Server.Addr, farmtest.Client(tls.VersionTLS13, w.c)).DidResume {
		t.Error("n3 resumed S past its grace cut, from the record n1 wrote whole")
	}
}

// TestPeersCutBeforeLateWriteHeardAfter is the first narrow order the
// design left open (lateWrite): n2's child, which carries the cut,
// reaches n1 only after n1's write of S has returned (n1's bus path is
// frozen meanwhile, as a slow link would hold it), so n1 wrote S whole
// and had nothing to cut again. Past S's grace no node may resume S: not
// n2, whose cut copy has lapsed, nor n3, joining later.
func TestPeersCutBeforeLateWriteHeardAfter(t *testing.T) {
	t.Parallel()
	const grace = 2 * time.Second
	w := startLateWrite(t, grace, nil)
	time.Sleep(100 * time.Millisecond) // n1's write returned
	w.thaw()
	farmtest.Eventually(t, 5*time.Second, "n1 cut its copy of S", func() bool {
		r, ok := lookup(w.n1.Cache, w.id)
		return ok && time.Until(r.Expires) <= grace
	})

	time.Sleep(time.Until(w.cutAt.Add(grace + 300*time.Millisecond)))
	t.Logf("the store keeps S %v after its grace", gatedTTL(t, w.rc, w.g.Transport, w.id).Round(time.Second))
	w.noResume(t)
}

// TestPeersCutHeardPastWriteMemory is the other order the design left
// open: as in TestPeersCutBeforeLateWriteHeardAfter (lateWrite), but
// n2's child, which carries the cut, reaches n1 only after n1 has
// forgotten its write (MaxAge plus MaxSkew after it returned): n1's bus
// path stays frozen that long, its subscription never dropped (a bus that
// delivers late and loses nothing, as a RabbitMQ queue does after an
// outage, is no gap, and nothing is re-sent). The child is then older
// than MaxAge: it is taken (a restriction is taken as long as its session
// may live), and its cut must still reach the store. Past S's grace no
// node may resume S: not n2, whose cut copy has lapsed, nor n3.
func TestPeersCutHeardPastWriteMemory(t *testing.T) {
	t.Parallel()
	const grace = 2 * time.Second
	const maxAge, maxSkew = 2 * time.Second, 100 * time.Millisecond
	w := startLateWrite(t, grace, func(c *farm.Config) { c.MaxAge, c.MaxSkew = maxAge, maxSkew })
	time.Sleep(100*time.Millisecond + maxAge + maxSkew + 200*time.Millisecond) // n1's write returned, and n1 forgot it
	w.thaw()
	farmtest.Eventually(t, 5*time.Second, "n1 heard S's child (S's grace is over: n1 retires S)", func() bool {
		_, ok := lookup(w.n1.Cache, w.id)
		return !ok
	})

	time.Sleep(time.Until(w.cutAt.Add(grace + 300*time.Millisecond)))
	time.Sleep(200 * time.Millisecond) // n1's store path
	if ttl := gatedTTL(t, w.rc, w.g.Transport, w.id); ttl > 0 {
		t.Errorf("the store keeps S %v after its grace", ttl.Round(time.Second))
	}
	w.noResume(t)
}

// TestLazyPeersIssuerKeepsGraceCut: with LazyPeers, n1 issues S (its cache
// holds S, from the handshake) and the client resumes S on n2. n2's child
// carries S's grace cut; n1 keeps no received copy of S to drop, but its
// cache's copy must be cut all the same: past the grace, S resumes on no
// node, n1 included. Bus only (no store), and with a Redis store.
func TestLazyPeersIssuerKeepsGraceCut(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		paths func(string) func(testing.TB, string) (transport.Bus, transport.Store)
	}{{"bus-only", busOnly}, {"store", redisTransport}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			const grace = time.Second
			url := redistest.URL(t)
			ms, _ := farmtest.Start(t, 3, &farmtest.Options{NewTransport: tc.paths(url),
				TweakCache: func(c *session.Config) { c.ResumeGrace = grace },
				Tweak:      func(c *farm.Config) { c.LazyPeers = true }})
			n1, n2 := ms[0], ms[1]
			c := &tlstest.FrozenCache{}
			tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, c))
			farmtest.Eventually(t, 5*time.Second, "n2 kept S", func() bool {
				return int(farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_lazy_sessions")) == 1
			})
			received := farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_received_total", "kind", "session")
			if !tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
				t.Fatal("S did not resume on n2")
			}
			resumed := time.Now()
			farmtest.Eventually(t, 5*time.Second, "n1 received S's child", func() bool {
				return farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_received_total", "kind", "session") > received
			})
			time.Sleep(time.Until(resumed.Add(grace + 300*time.Millisecond)))
			for _, m := range ms {
				if tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
					t.Errorf("%s resumed S past the grace n2's resumption cut it to", m.Name)
				}
			}
		})
	}
}

// TestLateHandshakeCompleteKeepsSingleUse: a single-use session S resumes
// on n1, whose server reports the handshake (Cache.HandshakeComplete)
// later than claimSettle after it ended, as a net/http server calling it
// on StateActive does for a client that sends its request late. The
// claim must not be released as if the handshake had failed: S was used,
// and may resume nowhere again, on n1 or on n2 (from the store, where a
// released claim puts it back).
func TestLateHandshakeCompleteKeepsSingleUse(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	o := &farmtest.Options{NewTransport: redisTransport(url), Mode: farm.Broadcast, TweakCache: singleUse, Tweak: patientClaims}
	ms, _ := farmtest.Start(t, 2, o)
	n1, n2 := ms[0], ms[1]
	cert, _ := tlstest.SharedCert()
	tcfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	n1.Cache.Install(tcfg)
	const late = 3 * time.Second // claimSettle is 2 s
	slow := tlstest.Serve(t, "n1-late", tcfg, func(c *tls.Conn) {
		time.Sleep(late)
		n1.Cache.HandshakeComplete(c)
	})

	ids := farmtest.HandshakeSessions(n1.Cache)
	c := &tlstest.FrozenCache{}
	tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, c)) // n1 reports in time: it reports
	waitStored(t, n1, ids()[0])

	done := make(chan tls.ConnectionState, 1)
	go func() {
		cs, _ := tlstest.Dial(slow.Addr, farmtest.Client(tls.VersionTLS13, c))
		done <- cs
	}()
	time.Sleep(late - 400*time.Millisecond) // past claimSettle, before the report
	for _, m := range []*farmtest.Member{n1, n2} {
		if tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
			t.Errorf("%s resumed the single-use session again while n1's report of its first use was late", m.Name)
		}
	}
	if cs := <-done; !cs.DidResume {
		t.Fatal("the first use of S did not resume")
	}
}

// TestRetirementHeardAfterPutBack is the second narrow order the design
// left open: a handshake on n1 presents the single-use session S and
// fails after n1's claim took S from the store; while the claim is held,
// n2's retirement of S reaches the store (nothing to delete) and n3, but
// reaches n1 only after n1 has released the claim and put S back (n1's bus
// path is frozen meanwhile). Once n1 hears it, S must leave the store
// again: n3, which has no copy, must not load S and resume it. n2's
// retirement is one it held (HoldRetired), re-sent at n3's request: a
// real one needs a consume of a second copy of S, which only a second
// write of S makes (a write-back after the store lost its data, or a
// write that timed out but landed, written again).
func TestRetirementHeardAfterPutBack(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	var stores []*gatedStore
	var proxy *nettest.Proxy
	o := &farmtest.Options{Mode: farm.Broadcast, WriteThrough: true, NewTransport: slowBusStorePaths(t, url, &stores, &proxy),
		TweakCache: singleUse,
		Tweak: func(c *farm.Config) {
			c.TallyInterval = -1
			// n1 forgets its first write of S (see recutLate) before the
			// claim: only its put-back is left to answer for.
			c.MaxAge, c.MaxSkew = 2*time.Second, 100*time.Millisecond
		}}
	ms, _ := farmtest.Start(t, 3, o)
	n1, n2, n3 := ms[0], ms[1], ms[2]
	time.Sleep(1200 * time.Millisecond) // past the re-sends asked for at start

	ids := farmtest.NewSessions(n1.Cache)
	c := &tlstest.FrozenCache{}
	tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, c))
	id := ids()[0]
	waitStored(t, n1, id)
	key := "s:" + hex.EncodeToString(id[:])
	for _, m := range ms[1:] {
		farmtest.Eventually(t, 5*time.Second, m.Name+" holds S", func() bool { _, ok := lookup(m.Cache, id); return ok })
	}
	time.Sleep(2200 * time.Millisecond) // past MaxAge+MaxSkew

	abortResumption(t, n1.Server.Addr, c)
	claimTookRecord(t, n1, key)
	released := func() uint64 {
		return farmtest.Counter(n1.Cache.Metrics(), "tlsfarm_cache_single_use_total", "result", "released")
	}

	proxy.Freeze()
	thawed := false
	defer func() {
		if !thawed {
			proxy.Thaw()
		}
	}()
	n2.Node.HoldRetired(id)
	n3.Node.AskResend()
	farmtest.Eventually(t, 5*time.Second, "n3 heard n2's retirement of S", func() bool { _, ok := lookup(n3.Cache, id); return !ok })
	time.Sleep(200 * time.Millisecond) // n2's deletion, on its store's path
	if released() != 0 {
		t.Fatal("n1 released its claim before n2's retirement: the test did not order them")
	}
	farmtest.Eventually(t, 10*time.Second, "n1 put S back", func() bool {
		_, err := n1.Store.GetRecord(context.Background(), key)
		return released() > 0 && err == nil
	})
	proxy.Thaw()
	thawed = true
	farmtest.Eventually(t, 5*time.Second, "n1 heard n2's retirement of S", func() bool { _, ok := lookup(n1.Cache, id); return !ok })

	time.Sleep(300 * time.Millisecond)
	if tlstest.MustDial(t, n3.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
		t.Fatal("n3 resumed the retired single-use session, from the record n1 put back")
	}
}

// landedTransport is a Redis transport (bus and store in one, a
// transport.Batcher) whose next combined write lands and still fails (as
// a write that timed out on a slow server and was carried out after), whose
// writes then fail while down is set, and whose subscription holds what it
// delivers while held is set, handing it over in order when it is cleared.
type landedTransport struct {
	*redisbus.Transport
	landOnce, down, held atomic.Bool
	mu                   sync.Mutex
	queued               [][]byte
	deliver              func([]byte)
}

var errLanded = errors.New("write timed out, and landed (test)")

func (l *landedTransport) PutAndPublish(ctx context.Context, items []transport.Item, dels []string, msgs [][]byte) error {
	if l.landOnce.CompareAndSwap(true, false) {
		if err := l.Transport.PutAndPublish(ctx, items, dels, msgs); err != nil {
			return err
		}
		return errLanded
	}
	if l.down.Load() {
		return errWritesDown
	}
	return l.Transport.PutAndPublish(ctx, items, dels, msgs)
}

func (l *landedTransport) Subscribe(ctx context.Context, deliver func([]byte), state func(bool, error)) error {
	return l.Transport.Subscribe(ctx, func(msg []byte) {
		l.mu.Lock()
		if l.held.Load() {
			l.queued = append(l.queued, bytes.Clone(msg))
			l.deliver = deliver
			l.mu.Unlock()
			return
		}
		l.mu.Unlock()
		deliver(msg)
	}, state)
}

// release hands over what the subscription held, and holds no more.
func (l *landedTransport) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.held.Store(false)
	for _, m := range l.queued {
		l.deliver(m)
	}
	l.queued = nil
}

// TestRewriteOfLandedWriteKeepsSingleUse: n1's combined write of the
// single-use session S times out but lands (Redis bus and store in one);
// n1 keeps S to write again once its writes work. Meanwhile the client
// resumes S on n2, which consumes it from the store, and n2's retirement
// reaches n1 only after n1 wrote S again (n1's subscription held). That
// write must not put S back (the take left a retirement mark), and once
// n1 hears of the retirement, n3 must not resume S a second time.
func TestRewriteOfLandedWriteKeepsSingleUse(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	var first *landedTransport
	o := &farmtest.Options{Mode: farm.Broadcast, TweakCache: singleUse,
		NewTransport: func(tb testing.TB, farmName string) (transport.Bus, transport.Store) {
			tr, _ := redisTransport(url)(tb, farmName)
			l := &landedTransport{Transport: tr.(*redisbus.Transport)}
			if first == nil {
				first = l
			}
			return l, l
		},
		Tweak: func(c *farm.Config) { c.TallyInterval = -1; patientClaims(c) }}
	ms, _ := farmtest.Start(t, 3, o)
	n1, n2, n3 := ms[0], ms[1], ms[2]
	time.Sleep(1200 * time.Millisecond) // past the re-sends asked for at start

	first.landOnce.Store(true)
	first.down.Store(true)
	ids := farmtest.HandshakeSessions(n1.Cache)
	c := &tlstest.FrozenCache{}
	tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, c))
	id := ids()[0]
	key := "s:" + hex.EncodeToString(id[:])
	farmtest.Eventually(t, 5*time.Second, "S landed, and n2 holds it", func() bool {
		_, ok := lookup(n2.Cache, id)
		_, err := n2.Store.GetRecord(context.Background(), key)
		return ok && err == nil && !first.landOnce.Load()
	})
	first.held.Store(true)
	if !tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
		t.Fatal("S did not resume on n2")
	}
	farmtest.Eventually(t, 5*time.Second, "n3 heard n2's retirement of S", func() bool { _, ok := lookup(n3.Cache, id); return !ok })

	writes := farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_store_writes_total")
	first.down.Store(false)
	farmtest.Eventually(t, 5*time.Second, "n1 wrote S again", func() bool {
		return farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_store_writes_total") > writes
	})
	// n2's take left S's retirement mark: n1's second write, a late
	// write, writes nothing.
	if _, err := n1.Store.GetRecord(context.Background(), key); err == nil {
		t.Error("n1's second write of S put it back in the store after n2 took it")
	}
	first.release()
	farmtest.Eventually(t, 5*time.Second, "n1 heard n2's retirement of S", func() bool { _, ok := lookup(n1.Cache, id); return !ok })
	time.Sleep(300 * time.Millisecond)
	if tlstest.MustDial(t, n3.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
		t.Fatal("n3 resumed the single-use session a second time, from n1's second write of it")
	}
}
