package farmtest

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// A Server is a transport's server as a scenario test reaches it: directly,
// or through a nettest.Proxy in front of it.
type Server struct {
	Addr string // the server's host:port
	// Open opens a member's bus and store for farm farmName on the
	// server, reached at addr (Addr, or a proxy's in front of it),
	// closing them when the test ends.
	Open func(t testing.TB, addr, farmName string) (transport.Bus, transport.Store)
}

// SplitPaths returns an Options.NewTransport for srv: the nth member
// Start joins (from 1) reaches its bus through a proxy at busAddr and its
// store through another at storeAddr, each with a connection of its own;
// every other member reaches the server directly, with one transport for
// both.
func SplitPaths(srv Server, nth int, busAddr, storeAddr string) func(testing.TB, string) (transport.Bus, transport.Store) {
	joined := 0
	return func(tb testing.TB, farmName string) (transport.Bus, transport.Store) {
		joined++
		if joined != nth {
			return srv.Open(tb, srv.Addr, farmName)
		}
		bus, _ := srv.Open(tb, busAddr, farmName)
		_, store := srv.Open(tb, storeAddr, farmName)
		return bus, store
	}
}

// A LagCase is a case of HeldRevokedWhileDeliveryLags: what happens to
// n2's bus path, and what n2 must then do.
type LagCase struct {
	Name   string
	MaxLag time.Duration        // the nodes' Config.MaxDeliveryLag
	Bus    func(*nettest.Proxy) // what happens to n2's bus path (nil: nothing)
	Gated  bool                 // n2's delivery lags past MaxLag: its hits ask the store
	Slow   bool                 // n2's store path slower than LookupTimeout
}

// LagCases are the cases HeldRevokedWhileDeliveryLags runs.
var LagCases = []LagCase{
	// Bounds of a second: a mark a loaded machine (-race, 2 cores)
	// reads late must not gate n2's hits.
	{"healthy", time.Second, nil, false, false},
	// RevokeSession waits MaxLag before it says applied: n2, its
	// delivery within the bound, has the revocation by then.
	{"within-bound", time.Second, func(px *nettest.Proxy) { px.SetLatency(80 * time.Millisecond) }, false, false},
	{"lagging", 150 * time.Millisecond, func(px *nettest.Proxy) { px.SetLatency(time.Second) }, true, false},
	{"stalled", 150 * time.Millisecond, (*nettest.Proxy).Freeze, true, false},
	{"bus-cut", 150 * time.Millisecond, (*nettest.Proxy).Cut, true, false},
	{"stalled/store-slow", 150 * time.Millisecond, (*nettest.Proxy).Freeze, true, true},
}

// HeldRevokedOptions say how HeldRevokedWhileDeliveryLags reaches a
// transport's server, and what it checks besides.
type HeldRevokedOptions struct {
	Version uint16 // the clients' TLS version
	// Server returns the server one case's farm uses, starting it if
	// need be.
	Server func(t *testing.T) Server
	// GatedOnly runs only the cases where n2's hits are gated.
	GatedOnly bool
	// Revoked, if set, makes the transport's own checks once n3 has
	// reported S's revocation applied.
	Revoked func(t *testing.T, n3 *Member)
}

// HeldRevokedWhileDeliveryLags runs each of LagCases as a parallel
// subtest: n2 holds a session S (issued on n1, received by broadcast) and
// a control session C; then n2's bus path (its bus has a connection of
// its own, through a proxy; its store another, through a second proxy)
// lags (a second of latency each way), stalls (frozen: the subscription
// stays up, nothing arrives) or is cut (the subscription down, the store
// up). S is revoked on n3, which reports it applied: n2 must not resume
// S, though the revocation has not reached it by its bus (before the hit
// gate it did), and still resumes C, once its store confirms C's chain is
// not revoked. With its store slow as well (reads past LookupTimeout, its
// probe still answered), n2 resumes neither: a store that does not
// confirm a hit refuses it. With the bus path healthy, or lagging within
// MaxDeliveryLag, n2 learns of the revocation by its bus before
// RevokeSession reports it applied, and asks its store nothing.
func HeldRevokedWhileDeliveryLags(t *testing.T, o HeldRevokedOptions) {
	for _, tc := range LagCases {
		if o.GatedOnly && !tc.Gated {
			continue
		}
		t.Run(tc.Name, func(t *testing.T) {
			t.Parallel()
			heldRevokedWhileDeliveryLags(t, o, o.Server(t), tc)
		})
	}
}

func heldRevokedWhileDeliveryLags(t *testing.T, o HeldRevokedOptions, srv Server, tc LagCase) {
	const probeTimeout = 10 * time.Second
	px, spx := nettest.NewProxy(t, srv.Addr), nettest.NewProxy(t, srv.Addr) // n2's bus path, its store's
	ms, _ := Start(t, 3, &Options{
		Mode: farm.Broadcast, WriteThrough: true,
		NewTransport: SplitPaths(srv, 2, px.Addr, spx.Addr),
		Tweak: func(c *farm.Config) {
			c.MaxDeliveryLag = tc.MaxLag
			// The stall is not an outage: n2 must count its bus up
			// for as long as the case takes (a gated read failing
			// while it counts the bus down is cut_off, and resumes
			// unchecked), which on a loaded machine has been over
			// 6 s. Its bus clients count a silent connection down
			// only after two unanswered pings 5 s apart (natsbus,
			// redisbus): a longer probe timeout would buy nothing.
			c.ProbeTimeout = probeTimeout
			c.LookupTimeout = time.Second
			c.TallyInterval = -1
		},
	})
	n1, n2, n3 := ms[0], ms[1], ms[2]
	// n2 inserts n1's broadcast copies of S and C only once it knows the
	// farm's revocations; before, it leaves them to the store, and would
	// never hold them. Join reads them within OpTimeout, which a loaded
	// machine can miss, leaving the read to a retry after Join returned.
	WaitRevocationsKnown(t, ms...)
	// Before the nodes close (cleanups run last registered first).
	t.Cleanup(func() { px.Thaw(); px.SetLatency(0); px.Restore(); spx.SetLatency(0) })
	marker := n2.Bus.(transport.DeliveryMarker)
	lag := deliveryLag(n2)
	Eventually(t, 5*time.Second, "n2's delivery was marked", func() bool { return lag() < tc.MaxLag })

	dial := func(m *Member, c tls.ClientSessionCache) bool {
		t.Helper()
		// The server's waits are bounded (a gated read by
		// LookupTimeout, a write-through by WriteThroughTimeout), but
		// a full CI run on two cores has held a handshake past 5 s
		// (TLS 1.3, within-bound and bus-cut at once): the dial allows
		// slowDial, and one slower than 5 s says where the server's
		// handshakes were waiting then.
		const slowDial = 20 * time.Second
		start := time.Now()
		var stacks atomic.Pointer[string]
		watch := time.AfterFunc(5*time.Second, func() {
			s := tlstest.ServerHandshakeStacks()
			stacks.Store(&s)
		})
		cs, err := tlstest.DialWithin(m.Server.Addr, Client(o.Version, c), slowDial)
		watch.Stop()
		took := time.Since(start).Round(time.Millisecond)
		waiting := ""
		if s := stacks.Load(); s != nil {
			waiting = *s
		}
		if err != nil {
			t.Fatalf("a dial to %s: %v (after %v; the server's failed handshakes: %v; server handshakes at 5 s:\n%s)",
				m.Name, err, took, m.Server.HandshakeErrors(), waiting)
		}
		if waiting != "" {
			t.Logf("a dial to %s took %v; server handshakes at 5 s:\n%s", m.Name, took, waiting)
		}
		return cs.DidResume
	}
	s, c, sid, _ := issueHeld(t, n1, n2, dial)
	var chain uint64
	for id, r := range n2.Cache.Snapshot(-1) {
		if id == sid {
			chain = r.Chain
		}
	}

	stalled := time.Now()
	if tc.Bus != nil {
		tc.Bus(px)
	}
	if tc.Slow {
		spx.SetLatency(1500 * time.Millisecond) // a probe still answers within ProbeTimeout
	}
	if tc.Gated {
		Eventually(t, 5*time.Second, "n2's delivery lags", func() bool { return lag() > 2*tc.MaxLag })
	} else if tc.Bus != nil {
		time.Sleep(300 * time.Millisecond)
		if l := lag(); l > tc.MaxLag {
			t.Fatalf("n2's delivery lags %v, past the bound %v", l, tc.MaxLag)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if st, err := n3.Node.RevokeSession(ctx, sid); err != nil || st != farm.RevokeApplied {
		t.Fatalf("RevokeSession = %v, %v", st, err)
	}
	if o.Revoked != nil {
		o.Revoked(t, n3)
	}
	if dial(n2, s) {
		t.Errorf("n2 resumed S, revoked on n3 (applied), from the copy it held, its delivery %v behind", lag().Round(time.Millisecond))
	}
	if resumed := dial(n2, c); resumed == tc.Slow {
		t.Errorf("n2 resumed C (not revoked, its store slow %t): %t, its delivery %v behind", tc.Slow, resumed, lag().Round(time.Millisecond))
	}
	gated := func(result string) uint64 {
		return Counter(n2.Node.Metrics(), "tlsfarm_farm_gated_hits_total", "result", result)
	}
	confirmed, revoked, storeErr, cutOff := gated("confirmed"), gated("revoked"), gated("store_error"), gated("cut_off")
	t.Logf("n2's gated hits: confirmed %d, revoked %d, store_error %d, cut_off %d", confirmed, revoked, storeErr, cutOff)
	switch {
	case !tc.Gated:
		if n := confirmed + revoked + storeErr + cutOff; n != 0 {
			t.Errorf("n2's delivery was within the bound, and its hits asked the store %d times", n)
		}
	case tc.Slow:
		if storeErr < 2 || confirmed+revoked+cutOff != 0 {
			// A read that fails while n2 counts its bus down is
			// cut_off: say whether the stall outlasted that.
			m := n2.Node.Metrics()
			t.Errorf("n2's gated hits with its store slow: store_error %d, want 2, and no other; %v into the stall, n2's bus probe healthy %t (probe timeout %v), its subscription marked %t, probes failed %d",
				storeErr, time.Since(stalled).Round(time.Millisecond), Counter(m, "tlsfarm_farm_healthy", "path", "bus") == 1, probeTimeout,
				!marker.DeliveredThrough().IsZero(), Counter(m, "tlsfarm_farm_probe_failures_total"))
		}
		return
	case revoked == 0 || confirmed == 0:
		t.Errorf("n2's gated hits: confirmed %d, revoked %d, want both", confirmed, revoked)
	}
	if !n2.Cache.Revoked(chain) {
		t.Error("n2 does not hold S's chain revoked")
	}
}

// issueHeld makes two sessions on n1, each with a client of its own that
// keeps presenting it (dial makes the connections), and waits until n2
// holds both, received by broadcast.
func issueHeld(t *testing.T, n1, n2 *Member, dial func(*Member, tls.ClientSessionCache) bool) (s, c *tlstest.FrozenCache, sid, cid session.ID) {
	t.Helper()
	ids := HandshakeSessions(n1.Cache)
	s, c = &tlstest.FrozenCache{}, &tlstest.FrozenCache{}
	dial(n1, s)
	dial(n1, c)
	sid, cid = ids()[0], ids()[1]
	waitHolds(t, n1, n2, sid, cid)
	return s, c, sid, cid
}

// deliveryLag returns a function that tells how far behind the present m's
// bus delivery is, as the bus marks it: an hour while it has no mark.
func deliveryLag(m *Member) func() time.Duration {
	marker := m.Bus.(transport.DeliveryMarker)
	return func() time.Duration {
		d := marker.DeliveredThrough()
		if d.IsZero() {
			return time.Hour
		}
		return time.Since(d)
	}
}

// YoungWindow is the young window (Config.WriteThroughTimeout) of the
// farms StartIssuerProxied starts: short, so that the tests wait past it.
const YoungWindow = time.Second

// CutOffTweak gives a farm whose tests cut a node off and restore it the
// settings they wait by: the young window YoungWindow, a heal every 300ms,
// a breaker cooldown of 500ms, opTimeout per store operation, clocks
// trusted to 100ms, and no tallies (a cut-off node publishes nothing).
func CutOffTweak(c *farm.Config, opTimeout time.Duration) {
	c.WriteThroughTimeout = YoungWindow
	c.HealInterval = 300 * time.Millisecond
	c.BreakerCooldown = 500 * time.Millisecond
	c.OpTimeout = opTimeout
	c.MaxSkew = 100 * time.Millisecond
	c.TallyInterval = -1
}

// StartIssuerProxied starts a broadcast write-through farm of n members on
// srv (bus and store), the first of which reaches it through its own
// nettest.Proxy (one transport for both), returned. It waits until every
// node has read the farm's revocations.
func StartIssuerProxied(t *testing.T, srv Server, n int) ([]*Member, *nettest.Proxy) {
	t.Helper()
	px := nettest.NewProxy(t, srv.Addr)
	joined := 0
	ms, _ := Start(t, n, &Options{
		Mode: farm.Broadcast, WriteThrough: true,
		NewTransport: func(tb testing.TB, farmName string) (transport.Bus, transport.Store) {
			a := srv.Addr
			if joined == 0 {
				a = px.Addr
			}
			joined++
			return srv.Open(tb, a, farmName)
		},
		Tweak: func(c *farm.Config) { CutOffTweak(c, 2*time.Second) },
	})
	WaitConnected(t, ms...)
	WaitRevocationsKnown(t, ms...)
	return ms, px
}

// RevokeUnknownWhileIssuerCutOff checks, on a farm StartIssuerProxied
// starts on srv, that n1, cut off from the farm (bus and store), issues S
// to a real client (of TLS version); past the young window S is revoked
// on n2, which neither holds S nor finds it in the store: the revocation
// is recorded by S's ID (RevokeRecorded; before, RevokeNotFound, and
// nothing was recorded). Once n1's path is back, n1 revokes S's chain
// before it writes back what it kept meanwhile: the store never holds S,
// S resumes on no node, and n1's other session was written back as usual
// and resumes on n3. If written is set, it makes the transport's own
// checks once n1 has written back its other session.
func RevokeUnknownWhileIssuerCutOff(t *testing.T, srv Server, version uint16, written func(t *testing.T, n2 *Member)) {
	ms, px := StartIssuerProxied(t, srv, 3)
	n1, n2, n3 := ms[0], ms[1], ms[2]
	n1ids := HandshakeSessions(n1.Cache)
	dial := func(m *Member, c tls.ClientSessionCache) bool {
		t.Helper()
		return tlstest.MustDial(t, m.Server.Addr, Client(version, c)).DidResume
	}

	px.Cut()
	restored := false
	t.Cleanup(func() {
		if !restored {
			px.Restore()
		}
	})
	Eventually(t, 10*time.Second, "n1 finds the farm gone", func() bool { return !n1.Node.Connected() })

	c, other := &tlstest.FrozenCache{}, &tlstest.FrozenCache{} // S, and a session of n1's the farm leaves alone
	if dial(n1, c) {
		t.Fatal("the first handshake resumed")
	}
	dial(n1, other)
	ids := n1ids()
	if len(ids) != 2 {
		t.Fatalf("n1 issued %d sessions, want 2", len(ids))
	}
	s, o := ids[0], ids[1]

	time.Sleep(YoungWindow + 300*time.Millisecond) // past the young window
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	st, err := n2.Node.RevokeSession(ctx, s)
	cancel()
	if err != nil || st != farm.RevokeRecorded {
		t.Fatalf("RevokeSession(S) on n2 = %v, %v; want %v", st, err, farm.RevokeRecorded)
	}

	// From n1's return until it has revoked S, the store never holds
	// S: n1 reads the revocations by ID before it writes back what it
	// kept through the outage.
	seen := make(chan bool, 1)
	stop := make(chan struct{})
	go func() {
		found := false
		for {
			select {
			case <-stop:
				seen <- found
				return
			case <-time.After(10 * time.Millisecond):
			}
			found = found || stored(n2, s)
		}
	}()
	px.Restore()
	restored = true
	back := time.Now()
	WaitConnected(t, n1)
	Eventually(t, 10*time.Second, "n1 revoked S's chain", func() bool {
		_, ok := n1.Cache.GetBuffer(s, nil)
		return !ok && !holds(n1.Cache, s)
	})
	Eventually(t, 10*time.Second, "n1 wrote back its other session", func() bool { return stored(n2, o) })
	close(stop)
	if <-seen {
		t.Error("the store held S after n1's return: n1 wrote it back before it revoked it")
	}
	if written != nil {
		written(t, n2)
	}
	Eventually(t, 10*time.Second, "every revocation applied", func() bool {
		for _, m := range []*Member{n1, n2} {
			if Counter(m.Node.Metrics(), "tlsfarm_farm_pending_revocations") != 0 {
				return false
			}
		}
		return true
	})
	t.Logf("n1 revoked S %v after its path came back", time.Since(back).Round(time.Millisecond))

	for _, m := range ms {
		if stored(m, s) {
			t.Fatalf("the store holds a record of the revoked S (asked through %s)", m.Name)
		}
		if dial(m, c) {
			t.Fatalf("%s resumed the revoked S", m.Name)
		}
	}
	if stored(n2, s) {
		t.Fatal("the store holds a record of the revoked S after the handshakes")
	}
	if !dial(n3, other) {
		t.Fatal("n1's other session did not resume on n3")
	}
}

// holds reports whether c holds id, without touching it.
func holds(c *session.Cache, id session.ID) bool {
	for got := range c.Expiries() {
		if got == id {
			return true
		}
	}
	return false
}

// waitHolds waits until to holds the sessions ids, which from issued and
// broadcast. If it does not within 5s, the failure says which of them to
// holds and what became of from's broadcasts.
func waitHolds(t *testing.T, from, to *Member, ids ...session.ID) {
	t.Helper()
	all := func() bool {
		for _, id := range ids {
			if !holds(to.Cache, id) {
				return false
			}
		}
		return true
	}
	for deadline := time.Now().Add(5 * time.Second); !all(); time.Sleep(5 * time.Millisecond) {
		if time.Now().Before(deadline) {
			continue
		}
		held := make([]bool, len(ids))
		for i, id := range ids {
			held[i] = holds(to.Cache, id)
		}
		fm, tm := from.Node.Metrics(), to.Node.Metrics()
		t.Fatalf("timed out after 5s waiting for %s to hold %s's sessions: held %v; %s published %d sessions (publish errors %d); %s received %d, inserted %d, refused by the cache %d, left to the store before the revocations were known %d, revocations known %t, bus gaps %d",
			to.Name, from.Name, held, from.Name,
			Counter(fm, "tlsfarm_farm_published_total", "kind", "session"), Counter(fm, "tlsfarm_farm_publish_errors_total"),
			to.Name, Counter(tm, "tlsfarm_farm_received_total", "kind", "session"), Counter(tm, "tlsfarm_farm_inserted_total"),
			Counter(tm, "tlsfarm_farm_insert_refused_total"), Counter(tm, "tlsfarm_farm_unknown_revocations_refused_total"),
			to.Node.RevocationsKnown(), Counter(tm, "tlsfarm_farm_bus_gaps_total", "reason", "dropped"))
	}
}

// stored reports whether the store m uses holds the record of id.
func stored(m *Member, id session.ID) bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := m.Store.GetRecord(ctx, "s:"+hex.EncodeToString(id[:]))
	return err == nil
}
