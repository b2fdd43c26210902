package farm_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
)

// TestReleasedClaimLeavesRetiredSessionGone: a handshake on n1 presents
// a single-use session S and fails after n1 claimed it (took it from the
// store); while the claim is held (until claimSettle after the failure),
// a retirement of S made on n2 reaches the store (nothing to delete) and
// n1. When n1 then releases the claim, it must not put S back in the
// store: S is retired in the farm, and a node that loads it (n3, joining
// later) would resume it. (A retirement of a claimed session comes from a
// consume whose HandshakeComplete came after its own claim was released,
// on n2; here n2 holds the retirement, as after a failed write, and
// re-sends it when n1 asks.) A control session whose claim n1 releases
// too, with no retirement, is put back and resumes on n3. Redis as bus and
// store, both modes.
func TestReleasedClaimLeavesRetiredSessionGone(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			o := &farmtest.Options{NewTransport: redisTransport(url), Mode: mode, WriteThrough: true, TweakCache: singleUse, Tweak: patientClaims}
			ms, name := farmtest.Start(t, 2, o)
			n1, n2 := ms[0], ms[1]
			// Past the rate limit of requests and re-sends the nodes'
			// own subscriptions coming up may have used.
			time.Sleep(1200 * time.Millisecond)

			// S, and a control session that no one retires.
			ids := farmtest.NewSessions(n1.Cache)
			c, ctl := &tlstest.FrozenCache{}, &tlstest.FrozenCache{}
			tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, c))
			tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, ctl))
			id, ctlID := ids()[0], ids()[1]
			waitStored(t, n1, id)
			waitStored(t, n1, ctlID)
			key := "s:" + fmt.Sprintf("%x", id[:])

			for _, fc := range []*tlstest.FrozenCache{c, ctl} {
				abortResumption(t, n1.Server.Addr, fc)
			}
			claimTookRecord(t, n1, key)
			released := func() uint64 {
				return farmtest.Counter(n1.Cache.Metrics(), "tlsfarm_cache_single_use_total", "result", "released")
			}

			n2.Node.HoldRetired(id)
			n1.Node.AskResend()
			farmtest.Eventually(t, 5*time.Second, "n1 heard n2's retirement of S", func() bool {
				_, ok := lookup(n1.Cache, id)
				return !ok
			})
			if released() != 0 {
				t.Fatal("n1 released its claim before it heard of the retirement: the test did not order them")
			}
			farmtest.Eventually(t, 10*time.Second, "n1 released its claims", func() bool { return released() > 1 })
			// A session n1 issues now is written after whatever the
			// release queued.
			later := farmtest.NewSessions(n1.Cache)
			tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, &tlstest.FrozenCache{}))
			waitStored(t, n1, later()[0])
			waitStored(t, n1, ctlID) // put back: the failed handshake did not use it
			if v, err := n1.Store.GetRecord(context.Background(), key); !errors.Is(err, transport.ErrNotFound) {
				t.Errorf("n1 put the retired S back in the store when it released its claim (%d bytes, %v)", len(v), err)
			}
			n3 := farmtest.Join(t, "n3", name, *o)
			farmtest.WaitConnected(t, n3)
			if tlstest.MustDial(t, n3.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
				t.Fatal("n3 resumed the retired single-use session")
			}
			if !tlstest.MustDial(t, n3.Server.Addr, farmtest.Client(tls.VersionTLS13, ctl)).DidResume {
				farmtest.LogStats(t, []*farmtest.Member{n3})
				t.Fatal("n3 did not resume the control session, whose claim n1 released")
			}
		})
	}
}

// abortResumption makes a TLS 1.3 client resume the session held in fc on
// addr and abort the handshake in its own VerifyConnection, after the
// server has taken its single-use claim: a handshake that fails.
func abortResumption(t *testing.T, addr string, fc *tlstest.FrozenCache) {
	t.Helper()
	bad := farmtest.Client(tls.VersionTLS13, fc)
	bad.VerifyConnection = func(tls.ConnectionState) error { return errors.New("abort") }
	if _, err := tlstest.Dial(addr, bad); err == nil {
		t.Fatal("the aborting client's handshake succeeded")
	}
}

// claimTookRecord fails t unless the record at key is gone from m's
// store, as a single-use claim takes it.
func claimTookRecord(t *testing.T, m *farmtest.Member, key string) {
	t.Helper()
	if _, err := m.Store.GetRecord(context.Background(), key); !errors.Is(err, transport.ErrNotFound) {
		t.Fatalf("%s's claim did not take S from the store: %v", m.Name, err)
	}
}
