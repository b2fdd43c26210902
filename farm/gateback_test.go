package farm_test

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
)

// TestGateReadsOnceStoreBack: a broadcast, write-through farm of two nodes
// on a Redis server of the test's own, each node's bus on a proxy, n2's
// store on a third. n2 issues S. n1's bus freezes and n1 revokes S: the
// store takes the revocation, n2 never hears of it. n2's bus path slows
// (its delivery lags past MaxDeliveryLag, its probe answered), so that
// its hits are gated. Then n2's store path is cut (connections refused)
// or frozen (a hung store): n2's store probe fails, and n2, cut off from
// its store, resumes S unchecked (cut_off): cut, at once; frozen, one
// dial in a row of six waits LookupTimeout at most. Then, right after a
// store probe has failed, with none in flight, the path is restored (or
// thawed), and n2 is dialled with S for a second: the store answers
// again, n2 must not resume S.
//
// Before, a gated hit skipped the read while the last store probe had
// failed, until the next probe (ProbeInterval later, 2 s here; 500 ms by
// default) was answered: n2 resumed S, revoked, as cut_off, with its
// store back (with the default interval, on every dial for 480-500 ms
// after the restore). Now a gated hit that finds the store's probe down
// and none in flight probes the store at once and waits for the answer
// (within LookupTimeout): answered, it reads the marks.
func TestGateReadsOnceStoreBack(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		break_, fix func(*nettest.Proxy)
	}{
		{"cut", (*nettest.Proxy).Cut, (*nettest.Proxy).Restore},
		{"frozen", (*nettest.Proxy).Freeze, (*nettest.Proxy).Thaw},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			gateReadsOnceStoreBack(t, tc.break_, tc.fix)
		})
	}
}

func gateReadsOnceStoreBack(t *testing.T, breakStore, fixStore func(*nettest.Proxy)) {
	const (
		maxLag  = 100 * time.Millisecond
		busSlow = 150 * time.Millisecond // each way: n2's delivery lags 2*busSlow
		lookup  = 500 * time.Millisecond
		probeTO = time.Second
		dials   = 20 // with S while the store path is broken
	)
	srv := redistest.Start(t)
	admin := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { admin.Close() })
	bus1, bus2, store2 := nettest.NewProxy(t, srv.Addr()), nettest.NewProxy(t, srv.Addr()), nettest.NewProxy(t, srv.Addr())
	rs := redisServer(srv.URL())
	joined := 0
	ms, _ := farmtest.Start(t, 2, &farmtest.Options{
		Mode: farm.Broadcast, WriteThrough: true,
		NewTransport: func(tb testing.TB, farmName string) (transport.Bus, transport.Store) {
			joined++
			if joined == 1 {
				bus, _ := rs.Open(tb, bus1.Addr, farmName)
				_, store := rs.Open(tb, srv.Addr(), farmName)
				return bus, store
			}
			bus, _ := rs.Open(tb, bus2.Addr, farmName)
			_, store := rs.Open(tb, store2.Addr, farmName)
			return bus, store
		},
		Tweak: func(c *farm.Config) {
			c.MaxDeliveryLag = maxLag
			c.LookupTimeout = lookup
			// n2's probe of its slow bus path (2*busSlow) is
			// answered.
			c.ProbeTimeout = probeTO
			// The window: a probe every 2 s.
			c.ProbeInterval = 2 * time.Second
			c.TallyInterval = -1
		},
	})
	n1, n2 := ms[0], ms[1]
	farmtest.WaitConnected(t, ms...)
	farmtest.WaitRevocationsKnown(t, ms...)
	// Before the nodes close (cleanups run last registered first).
	t.Cleanup(func() {
		bus1.Thaw()
		bus2.SetLatency(0)
		store2.Thaw()
		store2.Restore()
	})

	dial := func(m *farmtest.Member, c tls.ClientSessionCache) bool {
		t.Helper()
		return tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume
	}
	ids := farmtest.HandshakeSessions(n2.Cache)
	s := &tlstest.FrozenCache{}
	dial(n2, s)
	sid := ids()[0]
	farmtest.Eventually(t, 10*time.Second, "n1 holds S, and the store has it", func() bool {
		held := false
		for id := range n1.Cache.Snapshot(-1) {
			held = held || id == sid
		}
		return held && farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_store_writes_total") >= 1
	})

	// n1 revokes S: the store takes it, n1's bus does not.
	bus1.Freeze()
	marks := func() int {
		keys, _, err := admin.Scan(t.Context(), 0, "*"+farm.ChainMarkPrefix+"*", 1000).Result()
		if err != nil {
			t.Fatal(err)
		}
		return len(keys)
	}
	rctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	st, err := n1.Node.RevokeSession(rctx, sid)
	cancel()
	if st != farm.RevokePending {
		t.Fatalf("RevokeSession = %v, %v; want pending (n1's bus frozen)", st, err)
	}
	farmtest.Eventually(t, 10*time.Second, "S's chain mark in the store", func() bool { return marks() == 1 })

	bus2.SetLatency(busSlow)
	marker := n2.Bus.(transport.DeliveryMarker)
	farmtest.Eventually(t, 10*time.Second, "n2's delivery lags", func() bool {
		d := marker.DeliveredThrough()
		return !d.IsZero() && time.Since(d) > 2*maxLag
	})
	gated := func(result string) uint64 {
		return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_gated_hits_total", "result", result)
	}

	// The store path broken: n2 is cut off from its store. Its hits
	// resume S unchecked, a dial at most waiting for one probe, within
	// LookupTimeout (a hung store), while that probe is in flight.
	breakStore(store2)
	farmtest.Eventually(t, 10*time.Second, "n2's store probe fails", func() bool { return !n2.Node.StoreProbeUp() })
	var took []time.Duration
	waited := 0
	begun, outage := n2.Node.StoreProbesBegun(), time.Now()
	for range dials {
		start := time.Now()
		if !dial(n2, s) {
			t.Error("n2, cut off from its store, did not resume S (unchecked)")
		}
		took = append(took, time.Since(start).Round(time.Millisecond))
		if took[len(took)-1] >= lookup/2 {
			waited++
		}
	}
	probes, elapsed := n2.Node.StoreProbesBegun()-begun, time.Since(outage)
	t.Logf("n2's dials with S, its store path broken: %v; %d store probes in %v", took, probes, elapsed.Round(time.Millisecond))
	// The hits' probes are spaced: not one a gated hit. (The ticker's
	// own probes come every ProbeInterval, at most one here.)
	if limit := uint64(elapsed/farm.RecheckSpacing) + 2; probes > limit {
		t.Errorf("n2 began %d store probes for %d gated hits in %v, want at most %d (one every %v)",
			probes, dials, elapsed.Round(time.Millisecond), limit, farm.RecheckSpacing)
	}
	if waited > 1 {
		t.Errorf("%d of n2's dials with its store path broken waited LookupTimeout: %v", waited, took)
	}
	if gated("cut_off") < dials {
		t.Errorf("n2's gated hits with its store path broken: cut_off %d, want %d", gated("cut_off"), dials)
	}

	// The store back, right after a probe failed, none in flight (one
	// in flight through a frozen path would be answered at the thaw).
	failed := n2.Node.StoreProbeFailed()
	farmtest.Eventually(t, 10*time.Second, "a store probe fails, none in flight", func() bool {
		return n2.Node.StoreProbeFailed() > failed && !n2.Node.StoreProbeInFlight()
	})
	time.Sleep(farm.RecheckSpacing) // a hit's probe may begin at once
	fixStore(store2)
	restored := time.Now()
	cutOff := gated("cut_off")
	for time.Since(restored) < time.Second {
		if dial(n2, s) {
			t.Errorf("n2 resumed S, revoked on n1, %v after its store path was back (store probe up: %v)",
				time.Since(restored).Round(time.Millisecond), n2.Node.StoreProbeUp())
			break
		}
	}
	t.Logf("n2's gated hits: confirmed %d, revoked %d, store_error %d, cut_off %d (%d since the store came back)",
		gated("confirmed"), gated("revoked"), gated("store_error"), gated("cut_off"), gated("cut_off")-cutOff)
	if gated("revoked") == 0 {
		t.Error("n2's gate did not find S revoked once its store was back")
	}
}
