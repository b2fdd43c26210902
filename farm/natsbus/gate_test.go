package natsbus_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
)

// The hit gate (farm/hitgate.go) and revocation by ID (farm/revokeid.go)
// over NATS, bus and store (JetStream KV) on one server: the NATS variants
// of farm's TestHeldRevokedWhileDeliveryLags and
// TestRevokeUnknownWhileIssuerCutOff. Each runs on a private nats-server
// process (the machine's binary, before 2.11: keys expire by the value's
// clock) and on an embedded current one (per-message TTL).

// gateServer is a private NATS server for one test, reached at addr.
type gateServer struct {
	name string
	addr func(testing.TB) string
}

var gateServers = []gateServer{
	{"proc", func(tb testing.TB) string { return startNATS(tb).Addr() }},
	{"embedded", func(tb testing.TB) string { return strings.TrimPrefix(embedded(tb), "nats://") }},
}

// openAt opens a transport for farmName on the NATS server at addr,
// closed when the test ends.
func openAt(tb testing.TB, addr, farmName string) *natsbus.Transport {
	tb.Helper()
	tr, err := natsbus.Open("nats://"+addr, farmName, nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { tr.Close() })
	return tr
}

// TestNATSHeldRevokedWhileDeliveryLags: TestHeldRevokedWhileDeliveryLags
// (farm/laghits_test.go) over NATS. n2 holds S (issued on n1, received by
// broadcast) and a control session C; n2's bus is a connection of its own
// through a proxy, its store (the same server's KV) another through a
// second proxy. n2's bus path lags past MaxDeliveryLag (a second each
// way), stalls (frozen, for less than the client's ping timeout: the
// subscription stays up) or is cut (the subscription down, the store up).
// S is revoked on n3, which reports it applied: n2 must not resume S from
// the copy it holds, and resumes C once its store confirms that C's
// chain is not revoked. With its store slow as well (past LookupTimeout),
// n2 resumes neither. With the bus path healthy, or lagging within
// MaxDeliveryLag, n2 asks its store nothing.
func TestNATSHeldRevokedWhileDeliveryLags(t *testing.T) {
	t.Parallel()
	for _, srv := range gateServers {
		for _, tc := range []struct {
			name   string
			maxLag time.Duration
			bus    func(*nettest.Proxy)
			gated  bool
			slow   bool
		}{
			{"healthy", time.Second, nil, false, false},
			{"within-bound", time.Second, func(px *nettest.Proxy) { px.SetLatency(80 * time.Millisecond) }, false, false},
			{"lagging", 150 * time.Millisecond, func(px *nettest.Proxy) { px.SetLatency(time.Second) }, true, false},
			{"stalled", 150 * time.Millisecond, (*nettest.Proxy).Freeze, true, false},
			{"bus-cut", 150 * time.Millisecond, (*nettest.Proxy).Cut, true, false},
			{"stalled/store-slow", 150 * time.Millisecond, (*nettest.Proxy).Freeze, true, true},
		} {
			if srv.name == "embedded" && !tc.gated {
				continue // only the store differs: the mark's expiry
			}
			t.Run(srv.name+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				natsHeldRevoked(t, srv.addr(t), tc.maxLag, tc.bus, tc.gated, tc.slow)
			})
		}
	}
}

func natsHeldRevoked(t *testing.T, addr string, maxLag time.Duration, breakBus func(*nettest.Proxy), gate, slowStore bool) {
	px, spx := nettest.NewProxy(t, addr), nettest.NewProxy(t, addr) // n2's bus path, its store's
	joined := 0
	ms, _ := farmtest.Start(t, 3, &farmtest.Options{
		Mode: farm.Broadcast, WriteThrough: true,
		NewTransport: func(tb testing.TB, farmName string) (transport.Bus, transport.Store) {
			joined++
			if joined != 2 {
				tr := openAt(tb, addr, farmName)
				return tr, tr
			}
			return openAt(tb, px.Addr, farmName), openAt(tb, spx.Addr, farmName)
		},
		Tweak: func(c *farm.Config) {
			c.MaxDeliveryLag = maxLag
			c.ProbeTimeout = 5 * time.Second // the lag is not an outage
			c.LookupTimeout = time.Second
			c.TallyInterval = -1
		},
	})
	n1, n2, n3 := ms[0], ms[1], ms[2]
	// Before the nodes close (cleanups run last registered first).
	t.Cleanup(func() { px.Thaw(); px.SetLatency(0); px.Restore(); spx.SetLatency(0) })
	marker := n2.Bus.(transport.DeliveryMarker)
	lag := func() time.Duration {
		d := marker.DeliveredThrough()
		if d.IsZero() {
			return time.Hour
		}
		return time.Since(d)
	}
	farmtest.Eventually(t, 5*time.Second, "n2's delivery was marked", func() bool { return lag() < maxLag })

	ids := farmtest.HandshakeSessions(n1.Cache)
	s, c := &tlstest.FrozenCache{}, &tlstest.FrozenCache{}
	resumes(t, n1, s)
	resumes(t, n1, c)
	sid, cid := ids()[0], ids()[1]
	farmtest.Eventually(t, 5*time.Second, "n2 holds S and C", func() bool { return holds(n2.Cache, sid) && holds(n2.Cache, cid) })
	var chain uint64
	for id, r := range n2.Cache.Snapshot(-1) {
		if id == sid {
			chain = r.Chain
		}
	}

	if breakBus != nil {
		breakBus(px)
	}
	if slowStore {
		spx.SetLatency(1500 * time.Millisecond) // a probe still answers within ProbeTimeout
	}
	if gate {
		farmtest.Eventually(t, 5*time.Second, "n2's delivery lags", func() bool { return lag() > 2*maxLag })
	} else if breakBus != nil {
		time.Sleep(300 * time.Millisecond)
		if l := lag(); l > maxLag {
			t.Fatalf("n2's delivery lags %v, past the bound %v", l, maxLag)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if st, err := n3.Node.RevokeSession(ctx, sid); err != nil || st != farm.RevokeApplied {
		t.Fatalf("RevokeSession = %v, %v", st, err)
	}
	recordAgeKept(t, n3.Store.(*natsbus.Transport))
	if resumes(t, n2, s) {
		t.Errorf("n2 resumed S, revoked on n3 (applied), from the copy it held, its delivery %v behind", lag().Round(time.Millisecond))
	}
	if resumed := resumes(t, n2, c); resumed == slowStore {
		t.Errorf("n2 resumed C (not revoked, its store slow %t): %t, its delivery %v behind", slowStore, resumed, lag().Round(time.Millisecond))
	}
	gated := func(result string) uint64 {
		return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_gated_hits_total", "result", result)
	}
	confirmed, revoked, storeErr, cutOff := gated("confirmed"), gated("revoked"), gated("store_error"), gated("cut_off")
	t.Logf("n2's gated hits: confirmed %d, revoked %d, store_error %d, cut_off %d", confirmed, revoked, storeErr, cutOff)
	switch {
	case !gate:
		if n := confirmed + revoked + storeErr + cutOff; n != 0 {
			t.Errorf("n2's delivery was within the bound, and its hits asked the store %d times", n)
		}
	case slowStore:
		if storeErr < 2 || confirmed+revoked+cutOff != 0 {
			t.Errorf("n2's gated hits with its store slow: store_error %d, want 2, and no other", storeErr)
		}
		return
	case revoked == 0 || confirmed == 0:
		t.Errorf("n2's gated hits: confirmed %d, revoked %d, want both", confirmed, revoked)
	}
	if !n2.Cache.Revoked(chain) {
		t.Error("n2 does not hold S's chain revoked")
	}
}

// recordAgeKept fails the test if, on a server before 2.11, the age limit
// of the bucket of session records (its keys expire by the value's clock,
// the bucket drops them at its age limit) was raised past
// natsbus.DefaultLegacyRecordAge: the sessions the farm writes live the
// default Lifetime, so only a revocation's mark can have raised it, and
// then every record would stay in the bucket that long.
func recordAgeKept(t *testing.T, tr *natsbus.Transport) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	native, err := tr.NativeTTL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if native {
		return
	}
	js, err := jetstream.New(tr.Conn())
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, "KV_"+tr.RecordBucket())
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if age := info.Config.MaxAge; age > natsbus.DefaultLegacyRecordAge {
		t.Errorf("the records' bucket keeps every record %v after a revocation, not %v: the revocation's marks raised its age limit",
			age, natsbus.DefaultLegacyRecordAge)
	}
}

// natsRevUnknownYoung is the young window (WriteThroughTimeout) of the
// revocation-by-ID farm: short, so that the test waits past it.
const natsRevUnknownYoung = time.Second

// TestNATSRevokeUnknownWhileIssuerCutOff: TestRevokeUnknownWhileIssuerCutOff
// (farm/revunknown_test.go) over NATS. n1, cut off from the server (bus and
// store: one connection, through a proxy), issues S to a real client; past
// the young window S is revoked on n2, which neither holds S nor finds it
// in the store: the revocation is recorded by S's ID (RevokeRecorded).
// Once n1's path is back, n1 revokes S's chain before it writes back what
// it kept meanwhile: the store never holds S, S resumes on no node, and
// n1's other session was written back and resumes on n3.
func TestNATSRevokeUnknownWhileIssuerCutOff(t *testing.T) {
	t.Parallel()
	for _, srv := range gateServers {
		t.Run(srv.name, func(t *testing.T) {
			t.Parallel()
			natsRevokeUnknown(t, srv.addr(t))
		})
	}
}

func natsRevokeUnknown(t *testing.T, addr string) {
	px := nettest.NewProxy(t, addr)
	joined := 0
	ms, _ := farmtest.Start(t, 3, &farmtest.Options{
		Mode: farm.Broadcast, WriteThrough: true,
		NewTransport: func(tb testing.TB, farmName string) (transport.Bus, transport.Store) {
			a := addr
			if joined == 0 {
				a = px.Addr
			}
			joined++
			tr := openAt(tb, a, farmName)
			return tr, tr
		},
		Tweak: func(c *farm.Config) {
			c.WriteThroughTimeout = natsRevUnknownYoung
			c.HealInterval = 300 * time.Millisecond
			c.BreakerCooldown = 500 * time.Millisecond
			c.OpTimeout = 2 * time.Second
			c.MaxSkew = 100 * time.Millisecond
			c.TallyInterval = -1
		},
	})
	farmtest.WaitConnected(t, ms...)
	farmtest.WaitRevocationsKnown(t, ms...)
	n1, n2, n3 := ms[0], ms[1], ms[2]
	n1ids := farmtest.HandshakeSessions(n1.Cache)

	px.Cut()
	restored := false
	t.Cleanup(func() {
		if !restored {
			px.Restore()
		}
	})
	farmtest.Eventually(t, 10*time.Second, "n1 finds the farm gone", func() bool { return !n1.Node.Connected() })

	c, other := &tlstest.FrozenCache{}, &tlstest.FrozenCache{} // S, and a session of n1's the farm leaves alone
	if resumes(t, n1, c) {
		t.Fatal("the first handshake resumed")
	}
	resumes(t, n1, other)
	ids := n1ids()
	if len(ids) != 2 {
		t.Fatalf("n1 issued %d sessions, want 2", len(ids))
	}
	s, o := ids[0], ids[1]

	time.Sleep(natsRevUnknownYoung + 300*time.Millisecond) // past the young window
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	st, err := n2.Node.RevokeSession(ctx, s)
	cancel()
	if err != nil || st != farm.RevokeRecorded {
		t.Fatalf("RevokeSession(S) on n2 = %v, %v; want %v", st, err, farm.RevokeRecorded)
	}

	// From n1's return until it has revoked S, the store never holds S.
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
	farmtest.WaitConnected(t, n1)
	farmtest.Eventually(t, 10*time.Second, "n1 revoked S's chain", func() bool { return !holds(n1.Cache, s) })
	farmtest.Eventually(t, 10*time.Second, "n1 wrote back its other session", func() bool { return stored(n2, o) })
	close(stop)
	if <-seen {
		t.Error("the store held S after n1's return: n1 wrote it back before it revoked it")
	}
	recordAgeKept(t, n2.Store.(*natsbus.Transport))
	farmtest.Eventually(t, 10*time.Second, "every revocation applied", func() bool {
		return farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_pending_revocations") == 0 &&
			farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_pending_revocations") == 0
	})
	t.Logf("n1 revoked S %v after its path came back", time.Since(back).Round(time.Millisecond))

	for _, m := range ms {
		if stored(m, s) {
			t.Fatalf("the store holds a record of the revoked S (asked through %s)", m.Name)
		}
		if resumes(t, m, c) {
			t.Fatalf("%s resumed the revoked S", m.Name)
		}
	}
	if stored(n2, s) {
		t.Fatal("the store holds a record of the revoked S after the handshakes")
	}
	if !resumes(t, n3, other) {
		t.Fatal("n1's other session did not resume on n3")
	}
}
