package farm_test

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// lateBus is a stallBus that can also hold one message on its own, once
// the rest are released: the first message of sessions from a chosen
// sender reaches the node only when the test lets it go. It stands for a
// node whose backlog is long (nats.go queues up to 500,000 messages by
// default): the gap that a drop behind the backlog causes is reported, and
// settled, long before the backlog's last messages are handled.
type lateBus struct {
	*stallBus
	mu      sync.Mutex
	sender  uint64        // whose message to hold; 0: none
	reached chan struct{} // closed when the held message reaches delivery
	let     chan struct{} // closed by the test: deliver it
	handled chan struct{} // closed once the node has handled it
	early   bool          // it came before any gap was reported
	gaps    atomic.Int64  // gaps reported to the node (transport.ErrMessagesDropped)
}

// holdFrom arms the bus: the next message of sessions from sender is held.
func (b *lateBus) holdFrom(sender uint64) {
	b.mu.Lock()
	b.sender = sender
	b.reached, b.let, b.handled = make(chan struct{}), make(chan struct{}), make(chan struct{})
	b.mu.Unlock()
}

func (b *lateBus) Subscribe(ctx context.Context, deliver func([]byte), state func(bool, error)) error {
	return b.stallBus.Subscribe(ctx, func(msg []byte) {
		b.mu.Lock()
		held := b.sender != 0 && len(msg) >= farm.EnvSenderAt+8 && msg[farm.EnvTypeAt] == farm.EnvTypeSess &&
			binary.BigEndian.Uint64(msg[farm.EnvSenderAt:]) == b.sender
		var reached, let, handled chan struct{}
		if held {
			b.sender = 0
			reached, let, handled = b.reached, b.let, b.handled
			// Held before the gap was reported, it would hold the
			// report up too: let it go, and the test fails.
			b.early = b.gaps.Load() == 0
		}
		b.mu.Unlock()
		if !held {
			deliver(msg)
			return
		}
		close(reached)
		if !b.early {
			select {
			case <-let:
			case <-ctx.Done():
			}
		}
		deliver(msg)
		close(handled)
	}, func(up bool, err error) {
		if !up && errors.Is(err, transport.ErrMessagesDropped) {
			b.gaps.Add(1)
		}
		state(up, err)
	})
}

// lateTransport is stallTransport, with each bus a lateBus.
func lateTransport(natsURL, redisURL string) func(testing.TB, string) (transport.Bus, transport.Store) {
	open := stallTransport(natsURL, redisURL)
	return func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
		bus, store := open(t, farmName)
		return &lateBus{stallBus: bus.(*stallBus)}, store
	}
}

// A staleCase is one of the farm's promises that a node with a slow
// subscription must keep: n3 does act to the session S, whose message of
// n2 (its issue) n1 has queued, and nats.go drops n3's message of type typ
// for n1.
type staleCase struct {
	name    string
	opts    farmtest.Options
	noStore bool          // the bus alone: the gap drops n1's cache
	grace   time.Duration // the cache's ResumeGrace, if set
	typ     byte          // the type of n3's message that tells the farm
	// act has n3 retire, consume, cut or revoke S, and returns when.
	act func(t *testing.T, n3 *farmtest.Member, s session.ID, client *tlstest.FrozenCache) time.Time
}

func retireOnN3(t *testing.T, n3 *farmtest.Member, s session.ID, _ *tlstest.FrozenCache) time.Time {
	if !n3.Cache.Retire(s, session.OriginAPI) {
		t.Fatal("n3 did not hold the session to retire")
	}
	return time.Now()
}

var staleCases = []staleCase{
	{name: "retire", typ: farm.EnvTypeCut, act: retireOnN3},
	{name: "retire without a store", noStore: true, typ: farm.EnvTypeCut, act: retireOnN3},
	{
		name: "single use",
		opts: farmtest.Options{WriteThrough: true, TweakCache: singleUse, Tweak: patientClaims},
		typ:  farm.EnvTypeCut,
		act: func(t *testing.T, n3 *farmtest.Member, _ session.ID, client *tlstest.FrozenCache) time.Time {
			if !tlstest.MustDial(t, n3.Server.Addr, farmtest.Client(tls.VersionTLS13, client)).DidResume {
				t.Fatal("the single-use session did not resume on n3")
			}
			return time.Now()
		},
	},
	{
		name:  "grace cut",
		grace: 1500 * time.Millisecond,
		typ:   farm.EnvTypeSess, // the cut travels with the child (broadcast)
		act: func(t *testing.T, n3 *farmtest.Member, _ session.ID, client *tlstest.FrozenCache) time.Time {
			at := time.Now()
			if !tlstest.MustDial(t, n3.Server.Addr, farmtest.Client(tls.VersionTLS13, client)).DidResume {
				t.Fatal("the session did not resume on n3")
			}
			return at
		},
	},
	{
		name: "revoke",
		typ:  farm.EnvTypeRev,
		act: func(t *testing.T, n3 *farmtest.Member, s session.ID, _ *tlstest.FrozenCache) time.Time {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if st, err := n3.Node.RevokeSession(ctx, s); err != nil || st != farm.RevokeApplied {
				t.Fatalf("RevokeSession on n3 = %v, %v; want applied", st, err)
			}
			return time.Now()
		},
	},
}

// TestNATSSlowConsumerStaleIssue: three nodes over the NATS server and a
// Redis store (or none). n1 falls behind the bus (its deliveries held,
// PendingMsgs slowPending) with n2's message of two new sessions, S and U,
// queued for it, and nats.go then drops what n3 publishes: the
// retirement, the single-use consumption, the grace cut (a resumption on
// n3) or the revocation of S. When n1 catches up, its subscription reports
// the gap and n1 settles it (a reconcile pass and a read of the
// revocations; without a store, its cache dropped); n2's message, queued
// before the drop, reaches n1 only after that (held until the settle is
// done, as at the end of a long backlog). n1 must not take S back whole
// from it: S resumes on no node (after its grace, for the cut). With a
// store, U, which nobody touched, and T, which n1 cached before it fell
// behind, still resume on n1; and V, issued on n2 once n1 has caught up,
// is inserted on n1 at once (real TLS 1.3 handshakes). Before n1 left the
// sessions of such a message to the store, it inserted S whole, and
// resumed it after the retirement (with a store or without) and past the
// grace cut; the single-use consumption held (a resumption consumes the
// store's record) and so did the revocation (the read of the revocations
// refuses S's insert).
func TestNATSSlowConsumerStaleIssue(t *testing.T) {
	t.Parallel()
	natsURL := farmtest.ServerURL(t, "NATS", "TLSFARM_NATS_URL", "nats://127.0.0.1:4222")
	redisURL := redistest.URL(t)
	for _, tc := range staleCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o := tc.opts
			store := redisURL
			if tc.noStore {
				store = ""
			}
			o.NewTransport = lateTransport(natsURL, store)
			if tc.grace > 0 {
				grace := tc.grace
				o.TweakCache = func(c *session.Config) { c.ResumeGrace = grace }
			}
			ms, _ := farmtest.Start(t, 3, &o)
			n1, n2, n3 := ms[0], ms[1], ms[2]
			farmtest.WaitRevocationsKnown(t, ms...)
			b1 := n1.Bus.(*lateBus)
			dial := func(m *farmtest.Member, c *tlstest.FrozenCache) bool {
				return tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume
			}

			// T: cached on n1 before it falls behind.
			ids, cs := farmtest.Issue(t, n2, 1)
			tID, tClient := ids[0], cs[0]
			farmtest.Eventually(t, 5*time.Second, "n1 holds T", func() bool { _, ok := lookup(n1.Cache, tID); return ok })

			sess := spyMessages(t, natsURL, b1.Subject(), farm.EnvTypeSess, n2.Node.Instance())
			told := spyMessages(t, natsURL, b1.Subject(), tc.typ, n3.Node.Instance())

			// n1 falls behind with a backlog in front of n2's
			// message: 40 messages, a few at a time so that none is
			// dropped (the subscription holds about 80).
			b1.hold()
			ctx := context.Background()
			for range 10 {
				if err := n3.Node.PublishNoise(ctx, 4); err != nil {
					t.Fatal(err)
				}
				if err := b1.Conn().Flush(); err != nil {
					t.Fatal(err)
				}
				time.Sleep(10 * time.Millisecond)
			}
			b1.holdFrom(n2.Node.Instance())
			sent := sess.Load()
			ids, cs = farmtest.Issue(t, n2, 2)
			s, sClient, u, uClient := ids[0], cs[0], ids[1], cs[1]
			farmtest.Eventually(t, 5*time.Second, "n3 holds S and U", func() bool {
				_, a := lookup(n3.Cache, s)
				_, b := lookup(n3.Cache, u)
				return a && b
			})
			if sess.Load() == sent {
				t.Fatal("the spy saw no message of sessions from n2")
			}
			if err := b1.Conn().Flush(); err != nil {
				t.Fatal(err)
			}
			if d := b1.Dropped(); d != 0 {
				t.Fatalf("nats.go dropped %d messages before n2's: n1 may not have it queued", d)
			}
			if !tc.noStore {
				waitStored(t, n2, s)
				waitStored(t, n2, u)
			}

			// n1's subscription fills; then n3's message about S comes,
			// and is dropped.
			fillHeld(t, n3.Node, b1.stallBus)
			before, was := b1.Dropped(), told.Load()
			at := tc.act(t, n3, s, sClient)
			farmtest.Eventually(t, 5*time.Second, "n3's message reached the server", func() bool { return told.Load() > was })
			if err := b1.Conn().Flush(); err != nil {
				t.Fatal(err)
			}
			if b1.Dropped() <= before {
				t.Fatalf("nats.go dropped nothing after n3's message (%d before, %d after): n1 may have it queued", before, b1.Dropped())
			}
			if _, ok := lookup(n1.Cache, s); ok {
				t.Fatal("n1 holds S while its delivery is held")
			}

			// n1 catches up: the gap is reported and settled before n2's
			// message reaches it.
			settled := func() (passes, reads uint64) {
				ss := n1.Node.Metrics()
				if tc.noStore {
					return farmtest.Counter(ss, "tlsfarm_farm_reconciles_total", "result", "dropped"), 0
				}
				return farmtest.Counter(ss, "tlsfarm_farm_reconciles_total", "result", "done"),
					farmtest.Counter(ss, "tlsfarm_farm_tombstone_reads_total", "result", "read") +
						farmtest.Counter(ss, "tlsfarm_farm_tombstone_reads_total", "result", "unchanged")
			}
			passes, reads := settled()
			gapSessions := farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_gap_sessions_total")
			b1.release()
			select {
			case <-b1.reached:
			case <-time.After(10 * time.Second):
				t.Fatal("n2's message never reached n1's delivery")
			}
			if b1.early {
				t.Fatal("n2's message reached n1 before the gap was reported: the test cannot hold it past the settle")
			}
			farmtest.Eventually(t, 10*time.Second, "n1 settled the gap", func() bool {
				p, r := settled()
				return p > passes && (tc.noStore || r > reads)
			})
			close(b1.let)
			<-b1.handled
			_, cached := lookup(n1.Cache, s)
			t.Logf("nats.go dropped %d messages for n1; after n2's late message, S cached on n1: %t", b1.Dropped(), cached)

			// V, issued once n1's delivery mark is past the settle
			// (n1 has handled its backlog), is no late message: n1
			// takes it at once, well within MaxSkew of the settle.
			caughtUp := time.Now()
			farmtest.Eventually(t, 2*time.Second, "n1's delivery mark passed the settle", func() bool {
				return b1.DeliveredThrough().After(caughtUp)
			})
			ids, _ = farmtest.Issue(t, n2, 1)
			farmtest.Eventually(t, 2*time.Second, "n1 holds V", func() bool { _, ok := lookup(n1.Cache, ids[0]); return ok })
			// S and U, which n2's late message (or two) brought, and
			// not V.
			if got := farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_gap_sessions_total") - gapSessions; got != 2 {
				t.Errorf("n1 left %d of n2's sessions to the store; want 2 (S and U, not V)", got)
			}

			if tc.grace > 0 {
				// Resumable until its grace is over, and never after.
				time.Sleep(time.Until(at.Add(tc.grace + 200*time.Millisecond)))
			}
			if tc.typ == farm.EnvTypeCut && !tc.noStore {
				// n1 lost n3's message: only the store tells it, once
				// n3's deletion lands there, on the store's path of
				// its own, which may be slower than the bus (n2 and n3
				// refuse the store's record before that: they know).
				waitUnstored(t, n3, s)
			}
			for _, m := range []*farmtest.Member{n1, n2, n3} {
				if dial(m, sClient) {
					t.Errorf("%s resumed S after n3's %s", m.Name, tc.name)
				}
			}
			if tc.noStore {
				return // n1 dropped T with its cache, and U is in no store
			}
			// What nobody touched still resumes on n1.
			for _, c := range []struct {
				name   string
				client *tlstest.FrozenCache
			}{{"T", tClient}, {"U", uClient}} {
				if !dial(n1, c.client) {
					t.Errorf("%s does not resume on n1", c.name)
				}
			}
		})
	}
}
