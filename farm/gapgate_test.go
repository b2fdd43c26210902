package farm_test

import (
	"context"
	"crypto/tls"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
)

// TestNoRevokedResumeAfterGap: n1 holds S, its own session, and is cut off
// from the farm (its bus and its store, each on a path of its own); S is
// revoked on n2 meanwhile, by its chain (S was stored before the cut, so
// n2 knows it) or by its ID (S was issued during the cut: RevokeRecorded).
// Both paths come back, the store's slower (150 ms each way, within
// LookupTimeout and ProbeTimeout): n1's delivery mark is current within a
// MarkInterval, but the revocation reaches it only when its heal has read
// the store's tombstones and revoked-ids, some four round trips later. A
// client offering S to n1 from the moment its subscription is back, again
// and again for a second, never resumes it. Before, the hit gate switched
// off with the mark, and n1 resumed S until its heal had read the sets.
//
// In probe-in-flight, a probe of n1's store that began during the cut
// fails only once n1's subscription is back (under load, go-redis's
// retries end late), and the probes after it are slow to answer: the gate
// of a node healing from a gap, which trusts a store probe that failed
// since the subscription came back, took that one for a store found gone
// and let S resume unchecked (gated hits: cut_off 1; chain failed so in 5
// of 45 runs under load).
func TestNoRevokedResumeAfterGap(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		byID      bool // S issued during the cut, revoked by ID
		heldProbe bool // a store probe begun during the cut fails after it
		wantSt    farm.RevokeStatus
	}{
		{"chain", false, false, farm.RevokeApplied},
		{"id", true, false, farm.RevokeRecorded},
		{"probe-in-flight", false, true, farm.RevokeApplied},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			noRevokedResumeAfterGap(t, tc.byID, tc.heldProbe, tc.wantSt)
		})
	}
}

func noRevokedResumeAfterGap(t *testing.T, byID, heldProbe bool, wantSt farm.RevokeStatus) {
	srv := sharedRedis(t)
	px, spx := nettest.NewProxy(t, srv.Addr), nettest.NewProxy(t, srv.Addr) // n1's bus path, its store's
	split := farmtest.SplitPaths(srv, 1, px.Addr, spx.Addr)
	hold := newProbeHold()
	joined := 0
	ms, _ := farmtest.Start(t, 3, &farmtest.Options{
		Mode: farm.Broadcast, WriteThrough: true,
		NewTransport: func(tb testing.TB, farmName string) (transport.Bus, transport.Store) {
			bus, store := split(tb, farmName)
			if joined++; joined == 1 && heldProbe {
				return bus, heldProbeStore{store.(*redisbus.Transport), hold}
			}
			return bus, store
		},
		Tweak: func(c *farm.Config) {
			farmtest.CutOffTweak(c, 2*time.Second)
			c.LookupTimeout = 2 * time.Second
			c.ProbeTimeout = 5 * time.Second // the slow store is not an outage
		},
	})
	t.Cleanup(hold.end) // before the farm stops
	farmtest.WaitConnected(t, ms...)
	farmtest.WaitRevocationsKnown(t, ms...)
	n1, n2 := ms[0], ms[1]
	n1ids := farmtest.HandshakeSessions(n1.Cache)
	_, pool := tlstest.SharedCert()
	dial := func(c tls.ClientSessionCache) bool {
		t.Helper()
		return tlstest.MustDial(t, n1.Server.Addr, tlstest.ClientConfig(pool, "localhost", tls.VersionTLS13, c)).DidResume
	}
	restored := false
	restore := func() { px.Restore(); spx.Restore() }
	t.Cleanup(func() {
		spx.SetLatency(0)
		if !restored {
			restore()
		}
	})
	cut := func() {
		px.Cut()
		spx.Cut()
		farmtest.Eventually(t, 10*time.Second, "n1 finds the farm gone", func() bool { return !n1.Node.Connected() })
	}

	c := &tlstest.FrozenCache{}
	if byID {
		cut()
		dial(c)
	} else {
		dial(c)
		s := n1ids()[0]
		waitStored(t, n2, s)
		farmtest.Eventually(t, 5*time.Second, "n2 holds S", func() bool { _, ok := lookup(n2.Cache, s); return ok })
		cut()
	}
	if heldProbe {
		hold.armed.Store(true)
		select {
		case <-hold.entered:
		case <-time.After(10 * time.Second):
			t.Fatal("n1 never probed its store during the cut")
		}
		if hold.err == nil {
			t.Fatal("n1's probe of its store, begun during the cut, found it")
		}
	}
	s := n1ids()[0]
	if byID {
		time.Sleep(revUnknownYoung + 300*time.Millisecond) // past the young window
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	st, err := n2.Node.RevokeSession(ctx, s)
	cancel()
	if err != nil || st != wantSt {
		t.Fatalf("RevokeSession(S) on n2 = %v, %v; want %v", st, err, wantSt)
	}

	marker := n1.Bus.(transport.DeliveryMarker)
	spx.SetLatency(150 * time.Millisecond)
	restore()
	restored = true
	back := time.Now()
	farmtest.Eventually(t, 10*time.Second, "n1's subscription is back", func() bool {
		d := marker.DeliveredThrough()
		return !d.IsZero() && time.Since(d) < 100*time.Millisecond
	})
	if heldProbe {
		// The probe begun during the cut fails now. The dials begin
		// once n1 has counted it, not once the next probe (slow to
		// answer) begins: a prober that runs late would begin that
		// one after the heal, and the gate would have nothing left
		// to refuse (a 2 s delay planted before each probe).
		failed := n1.Node.StoreProbeFailed()
		close(hold.release)
		farmtest.Eventually(t, 10*time.Second, "n1 counts its failed probe", func() bool { return n1.Node.StoreProbeFailed() > failed })
	}
	gated := func(result string) uint64 {
		return farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_gated_hits_total", "result", result)
	}
	up := time.Now()
	dials := 0
	for time.Since(up) < time.Second {
		dials++
		if dial(c) {
			t.Fatalf("n1 resumed the revoked S %v after its subscription was back (%v after the restore; dial %d); gated hits: revoked %d, confirmed %d, store_error %d, cut_off %d",
				time.Since(up).Round(time.Millisecond), time.Since(back).Round(time.Millisecond), dials,
				gated("revoked"), gated("confirmed"), gated("store_error"), gated("cut_off"))
		}
	}
	hold.end()
	farmtest.Eventually(t, 10*time.Second, "n1 revoked S", func() bool { _, ok := lookup(n1.Cache, s); return !ok })
	t.Logf("n1 refused S %d times in the second after its subscription was back (%v after the restore); gated hits: revoked %d, confirmed %d, store_error %d, cut_off %d",
		dials, up.Sub(back).Round(time.Millisecond), gated("revoked"), gated("confirmed"), gated("store_error"), gated("cut_off"))
	if gated("revoked") == 0 {
		t.Error("n1's hit gate never found S's revocation in the store")
	}
}

// A probeHold holds the probes of a store (heldProbeStore) once armed: the
// first pings the store as it is, but returns what it found (err) only on
// release; entered is closed when it has pinged. The probes after it,
// while the hold lasts (until end), wait for their deadline as on a store
// path slow to answer; next is closed when the first of them begins.
type probeHold struct {
	armed                        atomic.Bool
	err                          error // the held probe's, once entered is closed
	entered, release, next, done chan struct{}
	held, ended                  sync.Once
}

func newProbeHold() *probeHold {
	return &probeHold{entered: make(chan struct{}), release: make(chan struct{}), next: make(chan struct{}), done: make(chan struct{})}
}

// end ends the hold: the probes answer again.
func (h *probeHold) end() { h.ended.Do(func() { close(h.done) }) }

// heldProbeStore is a Redis transport whose probes a probeHold holds.
type heldProbeStore struct {
	*redisbus.Transport
	h *probeHold
}

func (s heldProbeStore) Ping(ctx context.Context) error {
	h := s.h
	if h.armed.CompareAndSwap(true, false) {
		h.err = s.Transport.Ping(ctx)
		close(h.entered)
		select {
		case <-h.release:
		case <-h.done:
		}
		return h.err
	}
	select {
	case <-h.release:
	default:
		return s.Transport.Ping(ctx) // not held yet
	}
	select {
	case <-h.done:
		return s.Transport.Ping(ctx)
	default:
	}
	h.held.Do(func() { close(h.next) })
	select {
	case <-h.done:
		return s.Transport.Ping(ctx)
	case <-ctx.Done():
		return ctx.Err()
	}
}
