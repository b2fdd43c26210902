package farm_test

import (
	"context"
	"crypto/tls"
	"strings"
	"sync"
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

// revUnknownYoung is the young window (WriteThroughTimeout) of the
// revocation-by-ID farms: short, so that the tests wait past it.
const revUnknownYoung = farmtest.YoungWindow

// startRevUnknownFarm starts a broadcast write-through farm of nodes
// members on a private Redis (bus and store), the first of which reaches
// it through its own nettest.Proxy, returned.
func startRevUnknownFarm(t *testing.T, nodes int) ([]*farmtest.Member, *nettest.Proxy) {
	t.Helper()
	return farmtest.StartIssuerProxied(t, redisServer(redistest.Start(t).URL()), nodes)
}

// TestRevokeUnknownWhileIssuerCutOff: farmtest.RevokeUnknownWhileIssuerCutOff
// on a private Redis, for each TLS version: a session n1 issued while cut
// off from the farm, revoked by its ID meanwhile (RevokeRecorded; before,
// RevokeNotFound, and nothing was recorded), resumes on no node once n1 is
// back, and the store never holds it.
func TestRevokeUnknownWhileIssuerCutOff(t *testing.T) {
	t.Parallel()
	for _, v := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		t.Run(tls.VersionName(v), func(t *testing.T) {
			t.Parallel()
			farmtest.RevokeUnknownWhileIssuerCutOff(t, redisServer(redistest.Start(t).URL()), v, nil)
		})
	}
}

// TestRevokeUnknownIDRecorded: with every node up, a revocation of an ID
// that no node ever issued a session under is recorded (RevokeRecorded, nothing
// left queued), reaches every node, and
// is harmless: the farm's sessions resume as before, on every node.
func TestRevokeUnknownIDRecorded(t *testing.T) {
	t.Parallel()
	ms, _ := startRevUnknownFarm(t, 3)
	n1, n2 := ms[0], ms[1]
	ids, cs := farmtest.Issue(t, n1, 2)
	for _, id := range ids {
		waitStored(t, n2, id)
	}

	unknown := n2.Cache.NewID()
	time.Sleep(revUnknownYoung + 100*time.Millisecond) // not young any more
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	st, err := n2.Node.RevokeSession(ctx, unknown)
	cancel()
	if err != nil || st != farm.RevokeRecorded {
		t.Fatalf("RevokeSession(unknown) = %v, %v; want %v", st, err, farm.RevokeRecorded)
	}
	if got := st.String(); got != "recorded" {
		t.Errorf("RevokeRecorded.String() = %q", got)
	}
	if n := n2.Node.PendingRevocations(); n != 0 {
		t.Errorf("%d revocations pending after RevokeRecorded", n)
	}
	farmtest.Eventually(t, 5*time.Second, "every node heard of the ID", func() bool {
		for _, m := range ms {
			if farmtest.Counter(m.Node.Metrics(), "tlsfarm_farm_revoked_ids") == 0 {
				return false
			}
		}
		return true
	})
	for _, m := range ms {
		for i, c := range cs {
			if !dialAs(t, m, "localhost", c).DidResume {
				t.Fatalf("session %d did not resume on %s after the revocation of an unknown ID", i, m.Name)
			}
		}
	}
	// An ID the farm's keys do not authenticate: no node can hold it,
	// nothing is recorded.
	forged := unknown
	forged[session.IDLen-1] ^= 1
	ctx, cancel = context.WithTimeout(t.Context(), 5*time.Second)
	st, err = n2.Node.RevokeSession(ctx, forged)
	cancel()
	if err != nil || st != farm.RevokeNotFound {
		t.Fatalf("RevokeSession(forged) = %v, %v; want %v", st, err, farm.RevokeNotFound)
	}
	if got := farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_revoked_ids_total", "event", "recorded"); got != 1 {
		t.Errorf("revoked_ids_total{event=recorded} = %d, want 1", got)
	}
	// Again: recorded once more (a second record, not an error).
	ctx, cancel = context.WithTimeout(t.Context(), 5*time.Second)
	st, err = ms[2].Node.RevokeSession(ctx, unknown)
	cancel()
	if err != nil || st != farm.RevokeRecorded {
		t.Fatalf("second RevokeSession(unknown) on n3 = %v, %v; want %v", st, err, farm.RevokeRecorded)
	}
}

// TestRevokeWhileStoreUnreachable: n1, cut off from the farm, is asked to
// revoke S, which n2 issued meanwhile (stored, and broadcast to n3, not to
// n1): n1 can ask no one for S's chain. The revocation is queued by S's ID
// (RevokePending; before, RevokeNotFound with the store's error, and
// nothing queued), and once n1's path is back it asks the store again,
// finds S and revokes its chain: S resumes on no node, and the store
// holds no record of it.
func TestRevokeWhileStoreUnreachable(t *testing.T) {
	t.Parallel()
	ms, px := startRevUnknownFarm(t, 3)
	n1, n2, n3 := ms[0], ms[1], ms[2]
	s, cs, restore := revokeWhileCutOff(t, px, n1, n2, n3)
	if n := n1.Node.PendingRevocations(); n != 1 {
		t.Fatalf("%d revocations pending on n1, want 1", n)
	}

	restore()
	farmtest.WaitConnected(t, n1)
	checkRevokedAfterRestore(t, n1, n2, n3, s, cs[0], ms...)
}

// checkRevokedAfterRestore waits until revoker has applied its pending
// revocation of S and n2 and n3 have dropped S, then checks that the store
// holds no record of S and that S, presented from c, resumes on none of
// ms.
func checkRevokedAfterRestore(t *testing.T, revoker, n2, n3 *farmtest.Member, s session.ID, c *tlstest.FrozenCache, ms ...*farmtest.Member) {
	t.Helper()
	farmtest.Eventually(t, 15*time.Second, revoker.Name+"'s revocation applied", func() bool { return revoker.Node.PendingRevocations() == 0 })
	farmtest.Eventually(t, 5*time.Second, "n2 and n3 dropped S", func() bool {
		_, ok2 := lookup(n2.Cache, s)
		_, ok3 := lookup(n3.Cache, s)
		return !ok2 && !ok3
	})
	if stored(n2, s) {
		t.Fatal("the store holds a record of the revoked S")
	}
	for _, m := range ms {
		if dialAs(t, m, "localhost", c).DidResume {
			t.Fatalf("%s resumed the revoked S", m.Name)
		}
	}
}

// TestRevokeByIDSurvivesRestart: a revocation queued by ID while the store
// was out of reach (TestRevokeWhileStoreUnreachable) is kept beside
// Config.RevocationFile: n1 closes before its path comes back, and the
// node that joins in its place, with the same file, asks the store again,
// finds S and revokes its chain farm-wide. Before, the revocation was lost
// with n1, and S went on resuming.
func TestRevokeByIDSurvivesRestart(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	url, addr := srv.URL(), srv.Addr()
	px := nettest.NewProxy(t, addr)
	revFile := t.TempDir() + "/revocations"
	proxied := func(tb testing.TB, farmName string) (transport.Bus, transport.Store) {
		return redisTransport(strings.Replace(url, addr, px.Addr, 1))(tb, farmName)
	}
	tweak := func(c *farm.Config) { farmtest.CutOffTweak(c, time.Second) }
	o := &farmtest.Options{Mode: farm.Broadcast, WriteThrough: true, NewTransport: redisTransport(url), Tweak: tweak}
	ms, name := farmtest.Start(t, 2, o)
	n2, n3 := ms[0], ms[1]
	o1 := *o
	o1.NewTransport = proxied
	o1.Tweak = func(c *farm.Config) { tweak(c); c.RevocationFile = revFile }
	n1 := farmtest.Join(t, "n1", name, o1)
	farmtest.WaitConnected(t, n1, n2, n3)

	s, cs, restore := revokeWhileCutOff(t, px, n1, n2, n3)
	n1.Node.Close() // its last try fails: the path is still cut

	restore()
	again := farmtest.Join(t, "n1-again", name, o1)
	farmtest.WaitConnected(t, again)
	checkRevokedAfterRestore(t, again, n2, n3, s, cs[0], n2, n3, again)
}

// revokeWhileCutOff cuts n1's path (px), has n2 issue a session S that the
// store and n3 then hold, waits until S is no longer young, and revokes S
// on the cut-off n1, which must answer RevokePending. It returns S, the
// client cache that holds it, and a function that restores n1's path
// (done at cleanup if the test does not).
func revokeWhileCutOff(t *testing.T, px *nettest.Proxy, n1, n2, n3 *farmtest.Member) (session.ID, []*tlstest.FrozenCache, func()) {
	t.Helper()
	px.Cut()
	var once sync.Once
	restore := func() { once.Do(px.Restore) }
	t.Cleanup(restore)
	farmtest.Eventually(t, 10*time.Second, "n1 finds the farm gone", func() bool { return !n1.Node.Connected() })
	ids, cs := farmtest.Issue(t, n2, 1)
	s := ids[0]
	waitStored(t, n2, s)
	farmtest.Eventually(t, 5*time.Second, "n3 holds S", func() bool { _, ok := lookup(n3.Cache, s); return ok })
	time.Sleep(revUnknownYoung + 100*time.Millisecond)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	st, err := n1.Node.RevokeSession(ctx, s)
	cancel()
	if err != nil || st != farm.RevokePending {
		t.Fatalf("RevokeSession(S) on n1, cut off = %v, %v; want %v", st, err, farm.RevokePending)
	}
	return s, cs, restore
}
