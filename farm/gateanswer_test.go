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

// TestGateStoreRefusalIsNoCutOff: a broadcast, write-through farm of two
// nodes on a Redis server of the test's own, n2's bus on a proxy and its
// store reached as a user of its own. n2 issues S and C. Then n2's bus
// path breaks, so that its hits are gated, n1 revokes S, which it reports
// applied, and n2's writes or reads fail while the server still answers
// n2. n2 reaches the store all along: it must not resume S.
//
//   - writes_refused: n2's bus frozen (its probe still up for
//     ProbeTimeout), its rights to write taken away (ACL: NOPERM, an
//     answer), its reads answered. Before, n2 counted its store
//     unreachable once a write was refused, and resumed S unchecked on
//     the first dial (gated hits: cut_off 2, S's and C's); now the gate
//     reads S's mark, and C (not revoked) resumes.
//   - writes_unanswered: so, but the server holds n2's writes
//     (CLIENT PAUSE WRITE) until they time out. Before, the gate let S
//     resume without reading, as for a failing probe (cut_off 2); now
//     it reads.
//   - reads_refused: n2's bus cut (its subscription down), its rights to
//     read taken away. The gate's read fails with the server's answer;
//     before, a failed read with the bus down counted n2 cut off from
//     both paths, and S resumed unchecked (cut_off 1); now it is a
//     store_error, a full handshake.
func TestGateStoreRefusalIsNoCutOff(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		breakBus func(*nettest.Proxy)
		refuse   []any // the command that makes n2's writes or reads fail
		reads    bool  // n2's reads are answered
	}{
		{"writes_refused", (*nettest.Proxy).Freeze, []any{"ACL", "SETUSER", "n2", "-@write"}, true},
		{"writes_unanswered", (*nettest.Proxy).Freeze, []any{"CLIENT", "PAUSE", "20000", "WRITE"}, true},
		{"reads_refused", (*nettest.Proxy).Cut, []any{"ACL", "SETUSER", "n2", "-@read"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			gateStoreRefusal(t, tc.breakBus, tc.refuse, tc.reads)
		})
	}
}

func gateStoreRefusal(t *testing.T, breakBus func(*nettest.Proxy), refuse []any, reads bool) {
	const maxLag = 150 * time.Millisecond
	srv := redistest.Start(t)
	admin := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { admin.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	do := func(args ...any) {
		t.Helper()
		if err := admin.Do(ctx, args...).Err(); err != nil {
			t.Fatal(err)
		}
	}
	do("ACL", "SETUSER", "n2", "on", ">n2-secret", "~*", "&*", "+@all")
	px := nettest.NewProxy(t, srv.Addr())
	joined := 0
	ms, _ := farmtest.Start(t, 2, &farmtest.Options{
		NewTransport: func(tb testing.TB, farmName string) (transport.Bus, transport.Store) {
			joined++
			if joined == 1 {
				tr := openRedis(tb, srv.URL(), farmName)
				return tr, tr
			}
			return openRedis(tb, "redis://"+px.Addr+"/0", farmName),
				openRedis(tb, "redis://n2:n2-secret@"+srv.Addr()+"/0", farmName)
		},
		Mode: farm.Broadcast, WriteThrough: true,
		Tweak: func(c *farm.Config) {
			c.MaxDeliveryLag = maxLag
			c.LookupTimeout = time.Second
			// The frozen bus is not an outage for as long as the
			// test takes (see farmtest.HeldRevokedWhileDeliveryLags).
			c.ProbeTimeout = 10 * time.Second
			c.OpTimeout = 2 * time.Second // a held write fails soon
			c.TallyInterval = -1
		},
	})
	n1, n2 := ms[0], ms[1]
	farmtest.WaitConnected(t, ms...)
	farmtest.WaitRevocationsKnown(t, ms...)
	// Before the nodes close (cleanups run last registered first).
	t.Cleanup(func() { px.Thaw(); px.Restore() })

	dial := func(m *farmtest.Member, c tls.ClientSessionCache) bool {
		t.Helper()
		return tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume
	}
	ids := farmtest.HandshakeSessions(n2.Cache)
	s, c := &tlstest.FrozenCache{}, &tlstest.FrozenCache{}
	dial(n2, s)
	dial(n2, c)
	sid := ids()[0]
	farmtest.Eventually(t, 10*time.Second, "n1 holds S, and the store has it", func() bool {
		held := false
		for id := range n1.Cache.Snapshot(-1) {
			held = held || id == sid
		}
		return held && farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_store_writes_total") >= 2
	})

	breakBus(px)
	marker := n2.Bus.(transport.DeliveryMarker)
	farmtest.Eventually(t, 10*time.Second, "n2's delivery lags", func() bool {
		d := marker.DeliveredThrough()
		return d.IsZero() || time.Since(d) > 2*maxLag
	})
	if st, err := n1.Node.RevokeSession(ctx, sid); err != nil || st != farm.RevokeApplied {
		t.Fatalf("RevokeSession = %v, %v", st, err)
	}
	do(refuse...)
	// Before the nodes close.
	t.Cleanup(func() { admin.Do(context.Background(), "CLIENT", "UNPAUSE") })
	// n2 writes a new session, which fails where n2 may not write or
	// the server holds its writes. (Where it may not read, n2's gated
	// hits fail as they are.)
	writeErrs := func() uint64 { return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_store_write_errors_total") }
	before := writeErrs()
	dial(n2, &tlstest.FrozenCache{})
	if reads {
		farmtest.Eventually(t, 10*time.Second, "n2's store write failed", func() bool { return writeErrs() > before })
		if !n2.Node.StoreFailing() {
			t.Error("n2 does not count its store failing after a failed write")
		}
	}
	gated := func(result string) uint64 {
		return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_gated_hits_total", "result", result)
	}
	for i := range 5 {
		if dial(n2, s) {
			t.Errorf("n2 resumed S (dial %d), revoked on n1 (applied), while its store answered it (after %q)", i+1, refuse)
			break
		}
	}
	if reads && !dial(n2, c) {
		t.Error("n2 did not resume C (not revoked) with its reads answered")
	}
	t.Logf("n2's gated hits: confirmed %d, revoked %d, store_error %d, cut_off %d",
		gated("confirmed"), gated("revoked"), gated("store_error"), gated("cut_off"))
	if n := gated("cut_off"); n != 0 {
		t.Errorf("n2's gate counted itself cut off %d times while its store answered", n)
	}
}
