package farm_test

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestHeldRevokedWhileDeliveryLags: n2 holds a session S (issued on n1,
// received by broadcast) and a control session C; then n2's bus path
// (its bus has a connection of its own, through a proxy; its store is
// reached directly) lags (a second of latency each way), stalls (frozen:
// the subscription stays up, nothing arrives) or is cut (the subscription
// down, the store up). S is revoked on n3, which reports it applied: n2
// must not resume S, though the revocation has not reached it by its bus
// (before the hit gate it did), and still resumes C, once its store
// confirms C's chain is not revoked. With its store slow as well (reads
// past LookupTimeout, its probe still answered), n2 resumes neither: a
// store that does not confirm a hit refuses it. With the bus path healthy,
// or lagging within MaxDeliveryLag, n2 learns of the revocation by its bus
// before RevokeSession reports it applied, and asks its store nothing.
func TestHeldRevokedWhileDeliveryLags(t *testing.T) {
	t.Parallel()
	for _, tv := range versions {
		for _, tc := range []struct {
			name   string
			maxLag time.Duration
			bus    func(*nettest.Proxy) // what happens to n2's bus path
			gated  bool                 // n2's delivery lags past maxLag: its hits ask the store
			slow   bool                 // n2's store path slower than LookupTimeout
		}{
			// Bounds of a second: a mark a loaded machine (-race, 2
			// cores) reads late must not gate n2's hits.
			{"healthy", time.Second, nil, false, false},
			// RevokeSession waits maxLag before it says applied: n2,
			// its delivery within the bound, has the revocation by then.
			{"within-bound", time.Second, func(px *nettest.Proxy) { px.SetLatency(80 * time.Millisecond) }, false, false},
			{"lagging", 150 * time.Millisecond, func(px *nettest.Proxy) { px.SetLatency(time.Second) }, true, false},
			{"stalled", 150 * time.Millisecond, (*nettest.Proxy).Freeze, true, false},
			{"bus-cut", 150 * time.Millisecond, (*nettest.Proxy).Cut, true, false},
			{"stalled/store-slow", 150 * time.Millisecond, (*nettest.Proxy).Freeze, true, true},
		} {
			t.Run(tv.name+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				heldRevokedWhileDeliveryLags(t, tv.v, tc.maxLag, tc.bus, tc.gated, tc.slow)
			})
		}
	}
}

func heldRevokedWhileDeliveryLags(t *testing.T, version uint16, maxLag time.Duration, breakBus func(*nettest.Proxy), gate, slowStore bool) {
	url := redistest.URL(t)
	addr := strings.TrimPrefix(url, "redis://")
	if i := strings.IndexByte(addr, '/'); i >= 0 {
		addr = addr[:i]
	}
	px, spx := nettest.NewProxy(t, addr), nettest.NewProxy(t, addr) // n2's bus path, its store's
	joined := 0
	ms, _ := farmtest.Start(t, 3, &farmtest.Options{
		Mode: farm.Broadcast, WriteThrough: true,
		NewTransport: func(tb testing.TB, farmName string) (transport.Bus, transport.Store) {
			joined++
			if joined != 2 {
				st := openRedis(tb, url, farmName)
				return st, st
			}
			return openRedis(tb, strings.Replace(url, addr, px.Addr, 1), farmName),
				openRedis(tb, strings.Replace(url, addr, spx.Addr, 1), farmName)
		},
		Tweak: func(c *farm.Config) {
			c.MaxDeliveryLag = maxLag
			c.ProbeTimeout = 5 * time.Second // the lag is not an outage
			c.LookupTimeout = time.Second
			c.TallyInterval = -1
		},
	})
	n1, n2, n3 := ms[0], ms[1], ms[2]
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

	_, pool := tlstest.SharedCert()
	dial := func(m *farmtest.Member, c tls.ClientSessionCache) bool {
		t.Helper()
		return tlstest.MustDial(t, m.Server.Addr, tlstest.ClientConfig(pool, "localhost", version, c)).DidResume
	}
	ids := farmtest.HandshakeSessions(n1.Cache)
	s, c := &tlstest.FrozenCache{}, &tlstest.FrozenCache{}
	dial(n1, s)
	dial(n1, c)
	sid, cid := ids()[0], ids()[1]
	held := func(id session.ID) bool { _, ok := n2.Cache.GetBuffer(id, nil); return ok }
	farmtest.Eventually(t, 5*time.Second, "n2 holds S and C", func() bool { return held(sid) && held(cid) })

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
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if st, err := n3.Node.RevokeSession(ctx, sid); err != nil || st != farm.RevokeApplied {
		t.Fatalf("RevokeSession = %v, %v", st, err)
	}
	if dial(n2, s) {
		t.Errorf("n2 resumed S, revoked on n3 (applied), from the copy it held, its delivery %v behind", lag().Round(time.Millisecond))
	}
	if resumed := dial(n2, c); resumed == slowStore {
		t.Errorf("n2 resumed C (not revoked, its store slow %t): %t, its delivery %v behind", slowStore, resumed, lag().Round(time.Millisecond))
	}
	gated := func(result string) uint64 {
		return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_gated_hits_total", "result", result)
	}
	confirmed, revoked, storeErr, cutOff := gated("confirmed"), gated("revoked"), gated("store_error"), gated("cut_off")
	t.Logf("n2's gated hits: confirmed %d, revoked %d, store_error %d, cut_off %d", confirmed, revoked, storeErr, cutOff)
	if !gate {
		if confirmed+revoked+storeErr+cutOff != 0 {
			t.Errorf("n2's delivery was within the bound, and its hits asked the store %d times", confirmed+revoked+storeErr+cutOff)
		}
	} else if slowStore {
		if storeErr < 2 || confirmed+revoked+cutOff != 0 {
			t.Errorf("n2's gated hits with its store slow: store_error %d, want 2, and no other", storeErr)
		}
		return
	} else if revoked == 0 || confirmed == 0 {
		t.Errorf("n2's gated hits: confirmed %d, revoked %d, want both", confirmed, revoked)
	}
	if !n2.Cache.Revoked(chain) {
		t.Error("n2 does not hold S's chain revoked")
	}
}
