package farm_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
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
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	var admin *redis.Client
	do := func(args ...any) {
		t.Helper()
		if err := admin.Do(ctx, args...).Err(); err != nil {
			t.Fatal(err)
		}
	}
	g := newGateFarm(t, gateFarmOptions{
		MaxLag:      maxLag,
		N2StoreUser: "n2:n2-secret",
		BeforeStart: func(g *gateFarm) {
			admin = g.admin
			do("ACL", "SETUSER", "n2", "on", ">n2-secret", "~*", "&*", "+@all")
		},
		Tweak: func(c *farm.Config) {
			c.LookupTimeout = time.Second
			// The frozen bus is not an outage for as long as the
			// test takes (see farmtest.HeldRevokedWhileDeliveryLags).
			c.ProbeTimeout = 10 * time.Second
			c.OpTimeout = 2 * time.Second // a held write fails soon
		},
	})
	n2 := g.n2
	g.issue(2)
	s, c := g.sessions[0], g.sessions[1]

	breakBus(g.bus2)
	g.waitBusBroken()
	g.revokeApplied(ctx)
	do(refuse...)
	// n2 writes a new session, which fails where n2 may not write or
	// the server holds its writes. (Where it may not read, n2's gated
	// hits fail as they are.)
	writeErrs := func() uint64 { return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_store_write_errors_total") }
	before := writeErrs()
	g.dial(n2, &tlstest.FrozenCache{})
	if reads {
		farmtest.Eventually(t, 10*time.Second, "n2's store write failed", func() bool { return writeErrs() > before })
		if !n2.Node.StoreFailing() {
			t.Error("n2 does not count its store failing after a failed write")
		}
	}
	for i := range 5 {
		if g.dial(n2, s) {
			t.Errorf("n2 resumed S (dial %d), revoked on n1 (applied), while its store answered it (after %q)", i+1, refuse)
			break
		}
	}
	if reads && !g.dial(n2, c) {
		t.Error("n2 did not resume C (not revoked) with its reads answered")
	}
	t.Logf("n2's gated hits: %s", g.gatedCounts())
	if n := g.gated("cut_off"); n != 0 {
		t.Errorf("n2's gate counted itself cut off %d times while its store answered", n)
	}
}
