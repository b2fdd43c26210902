package farm_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// The carry-loss tests hold the farm's promises for carried sessions
// (Config.CarrySessions) against a private redis-server (bus and store)
// that is killed and restarted empty while a carried copy is in flight:
// its issuer's path frozen, so that only the client's ticket and the
// resuming node know of the session when the store loses its data.

// carryLossTweak gives a carry farm on a private Redis the promise farms'
// heal interval and breaker cooldown: a node notices the store restarted
// empty, and writes its sessions back, within a second.
func carryLossTweak(more func(*farm.Config)) func(*farm.Config) {
	return func(c *farm.Config) {
		c.HealInterval = 300 * time.Millisecond
		c.BreakerCooldown = 500 * time.Millisecond
		c.LookupTimeout = 2 * time.Second
		if more != nil {
			more(c)
		}
	}
}

// TestCarriedGraceCutThroughStoreLoss: S, issued on n1 whose path to the
// farm is frozen, resumes on n2 from the copy its ticket carries (n2 cuts
// S to its grace and issues the child C); then Redis restarts empty and n1
// is thawed, before S's grace ends or after. The store's record of S, if
// any, expires by the grace; past it S resumes on no node (n1, n2, and n3,
// which joins then and can only load from the store), while C resumes on
// every node.
func TestCarriedGraceCutThroughStoreLoss(t *testing.T) {
	t.Parallel()
	for _, drop := range []bool{false, true} {
		for _, late := range []bool{false, true} {
			name := map[bool]string{false: "thaw", true: "cut"}[drop] + map[bool]string{false: "-within-grace", true: "-past-grace"}[late]
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				carriedGraceCutThroughStoreLoss(t, drop, late, true)
			})
		}
	}
}

// TestCarriedGraceCutIssuerCut is TestCarriedGraceCutThroughStoreLoss with
// the store keeping its data: n1's path is cut and restored, so that its
// write of S lands only after n2's cut of S (which found no record to
// shorten), and C's message, which tells n1 of the cut, is lost to it.
func TestCarriedGraceCutIssuerCut(t *testing.T) {
	t.Parallel()
	for _, late := range []bool{false, true} {
		t.Run(map[bool]string{false: "within-grace", true: "past-grace"}[late], func(t *testing.T) {
			t.Parallel()
			carriedGraceCutThroughStoreLoss(t, true, late, false)
		})
	}
}

// carriedGraceCutThroughStoreLoss: with drop, n1's path is cut and
// restored rather than thawed, so that what it held back both ways (its
// write and broadcast of S, n2's broadcast of C) is lost.
func carriedGraceCutThroughStoreLoss(t *testing.T, drop, late, loss bool) {
	const grace = 4 * time.Second
	srv := redistest.Start(t)
	tr := newSessionTrace()
	f := startCarryFarmOn(t, srv.URL(), 2, 1, grace, carryLossTweak(func(c *farm.Config) { c.Logger = tr.logger(c.NodeName) }))
	n1, n2 := f.ms[0], f.ms[1]
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { rc.Close() })
	n1ids, n2ids := farmtest.HandshakeSessions(n1.Cache), farmtest.HandshakeSessions(n2.Cache)
	tr.watch(n1, n2)
	tr.watchStore(t, srv.Addr())
	defer func() {
		if t.Failed() {
			t.Logf("S's trace (the time since the farm started; redis: the server's clock):\n%s", tr.dump())
		}
	}()

	f.px[0].Freeze()
	thawed := false
	thaw := func() {
		if !thawed {
			f.px[0].Thaw()
			thawed = true
		}
	}
	t.Cleanup(thaw)
	back := thaw
	if drop {
		back = func() {
			f.px[0].Cut()
			f.px[0].Restore()
			thawed = true
		}
	}
	c := &tlstest.FrozenCache{}
	if dialAs(t, n1, "localhost", c).DidResume {
		t.Fatal("the first handshake resumed")
	}
	s := n1ids()[0]
	tr.setID(s)
	first, ok := lookup(n1.Cache, s)
	if !ok {
		t.Fatal("n1 does not hold the session it issued")
	}
	child := &tlstest.FrozenCache{}
	if !dialAs(t, n2, "localhost", passOn{c, child}).DidResume {
		t.Fatalf("n2 did not resume S from its carried copy (carried: %d admitted, %d refused, %d old, %d gap)",
			carried(n2, "admitted"), carried(n2, "refused"), carried(n2, "old"), carried(n2, "gap"))
	}
	resumedAt := time.Now()
	graceEnd := resumedAt.Add(grace)
	tr.add("S resumed on n2 from its carried copy; its grace ends at %s", tr.rel(graceEnd))
	if got := carried(n2, "admitted"); got != 1 {
		t.Fatalf("n2 admitted %d carried copies, want 1", got)
	}
	kid := n2ids()[0]
	waitStored(t, n2, kid)

	if loss {
		srv.Kill()
		srv.Restart() // empty
		lost := time.Now()
		tr.add("Redis restarted empty")
		// n2 finds the store emptied and writes its sessions back: C
		// whole, S cut.
		farmtest.Eventually(t, 10*time.Second, "n2 wrote C back", func() bool { return stored(n2, kid) })
		t.Logf("n2 wrote C back %v after the restart", time.Since(lost).Round(time.Millisecond))
	}
	if late {
		time.Sleep(time.Until(graceEnd.Add(200 * time.Millisecond)))
	}
	tr.add("n1's path thawed, or cut and restored")
	backCalled := time.Now()
	back()
	farmtest.WaitConnected(t, n1)
	backAt := time.Now()

	// n1 writes S (its write failed, or waited in the proxy) and hears of
	// the cut: C's message if it was held, else n2's re-send, which n1's
	// return and write-back ask for. Until then n1 holds S whole and the
	// store may too (the window a node's return leaves open).
	farmtest.Eventually(t, 10*time.Second, "n1 holds S cut to its grace, or not at all (whole, it resumes S past the grace and writes it whole)", func() bool {
		r, ok := lookup(n1.Cache, s)
		return !ok || !r.Expires.After(graceEnd)
	})
	farmtest.Eventually(t, 10*time.Second, "the store's record of S ends by its grace", func() bool {
		asked := time.Now()
		ttl, ok := storedTTL(t, rc, n1, s)
		return !ok || !asked.Add(ttl).After(graceEnd.Add(promiseOpTimeout))
	})
	t.Logf("n1 and the store hold S to its grace %v after n1's return", time.Since(backAt).Round(time.Millisecond))
	tr.add("n1 holds S cut or not at all, the store's record ends by the grace")

	time.Sleep(time.Until(graceEnd.Add(300 * time.Millisecond)))
	n3 := farmtest.Join(t, "n3", f.name, *f.o)
	tr.watch(n3)
	tr.add("n3 joined")
	waitServing(t, n1, n2, n3)
	all := append(f.ms, n3)
	for _, m := range all {
		tr.add("S presented to %s", m.Name)
		if dialAs(t, m, "localhost", c).DidResume {
			logCarryLoss(t, all)
			logHolders(t, rc, s, all)
			t.Fatalf("%s resumed S past its grace after the store's loss (how each node came to hold S: the trace below)", m.Name)
		}
	}
	if ttl, ok := storedTTL(t, rc, n1, s); ok {
		t.Fatalf("the store still holds S (for %v more) past its grace", ttl)
	}
	for _, m := range all {
		if !dialAs(t, m, "localhost", child).DidResume {
			logCarryLoss(t, all)
			t.Fatalf("C did not resume on %s", m.Name)
		}
	}
	if drop {
		// What n1's path held when it was cut is lost: n1 writes S
		// again only as it knows it after its return (refreshLater
		// reads its cache first). A write made before it and sent
		// again after it (go-redis's own retries did) put S whole in
		// the store once n1 had heard S cut past its grace, and n1, or
		// n3 by a load, resumed it before n1 deleted it again. A SET
		// of S's whole record tells when it was made by its TTL: S's
		// expiry less the TTL. Its retries end within a second or so.
		time.Sleep(time.Until(backCalled.Add(2 * time.Second)))
		for _, w := range tr.setsAfter(backCalled) {
			if made := first.Expires.Add(-w.ttl); made.Before(backCalled) {
				t.Errorf("n1's write of S whole, made %v before n1's path was cut, reached the store %v after it",
					backCalled.Sub(made).Round(time.Millisecond), w.at.Sub(backCalled).Round(time.Millisecond))
			}
		}
	}
}

// logHolders logs who holds the session id now: the store (for how much
// longer) and each of ms (until when).
func logHolders(t *testing.T, rc *redis.Client, id session.ID, ms []*farmtest.Member) {
	t.Helper()
	if ttl, ok := storedTTL(t, rc, ms[0], id); ok {
		t.Logf("the store holds S for %v more", ttl)
	} else {
		t.Log("the store holds no record of S")
	}
	for _, m := range ms {
		if r, ok := lookup(m.Cache, id); ok {
			t.Logf("%s holds S until %v from now", m.Name, time.Until(r.Expires).Round(time.Millisecond))
		} else {
			t.Logf("%s does not hold S", m.Name)
		}
	}
}

// logCarryLoss logs the counters of ms that tell how a carried session
// fared through the store's loss.
func logCarryLoss(t *testing.T, ms []*farmtest.Member) {
	t.Helper()
	for _, m := range ms {
		fm := m.Node.Metrics()
		c := func(name string, labels ...string) uint64 { return farmtest.Counter(fm, name, labels...) }
		t.Logf("%s: written back %d, resend asked %d received %d resent %d, cut sent %d received %d, retire sent %d received %d, reconciles store_lost %d, carried admitted %d gap %d",
			m.Name, c("tlsfarm_farm_written_back_total"),
			c("tlsfarm_farm_lifecycle_resend_total", "event", "request_sent"), c("tlsfarm_farm_lifecycle_resend_total", "event", "request_received"), c("tlsfarm_farm_lifecycle_resend_total", "event", "resent"),
			c("tlsfarm_farm_lifecycle_total", "event", "cut_sent"), c("tlsfarm_farm_lifecycle_total", "event", "cut_received"),
			c("tlsfarm_farm_lifecycle_total", "event", "retire_sent"), c("tlsfarm_farm_lifecycle_total", "event", "retire_received"),
			c("tlsfarm_farm_reconciles_total", "result", "store_lost"), c("tlsfarm_farm_carried_total", "result", "admitted"), c("tlsfarm_farm_carried_total", "result", "gap"))
	}
}

// TestCarriedRevokedThroughStoreLoss: S, issued on n1 whose path to the
// farm is frozen, resumes on n2 from its carried copy (child C, which n3
// receives); n2 revokes S — before Redis is killed, or while it is down
// (pending) — and Redis restarts empty; n1's path is then cut and
// restored, so that it missed the revocation. Once the revocation is
// applied, neither S nor C resumes on any node: n1, n2, n3 (S's carried
// ticket, still young, presented to n3, which never held S), and n4,
// which joins afterwards; an untouched session of n2 still resumes on n4.
func TestCarriedRevokedThroughStoreLoss(t *testing.T) {
	t.Parallel()
	for _, when := range []string{"before-loss", "while-down"} {
		t.Run(when, func(t *testing.T) {
			t.Parallel()
			carriedRevokedThroughStoreLoss(t, when == "while-down")
		})
	}
}

func carriedRevokedThroughStoreLoss(t *testing.T, whileDown bool) {
	srv := redistest.Start(t)
	f := startCarryFarmOn(t, srv.URL(), 3, 1, 10*time.Second, carryLossTweak(func(c *farm.Config) {
		// S stays young through the restart: its carried copy is
		// presented to n3 after it.
		c.WriteThroughTimeout = 8 * time.Second
		c.HealInterval = 10 * time.Second
	}))
	n1, n2, n3 := f.ms[0], f.ms[1], f.ms[2]
	n2ids := farmtest.HandshakeSessions(n2.Cache)
	control := &tlstest.FrozenCache{}
	dialAs(t, n2, "localhost", control)
	waitStored(t, n2, n2ids()[0])

	f.px[0].Freeze()
	t.Cleanup(f.px[0].Thaw)
	n1ids := farmtest.HandshakeSessions(n1.Cache)
	c := &tlstest.FrozenCache{}
	dialAs(t, n1, "localhost", c)
	s := n1ids()[0]
	issued := time.Now()
	child := &tlstest.FrozenCache{}
	if !dialAs(t, n2, "localhost", passOn{c, child}).DidResume {
		t.Fatalf("n2 did not resume S from its carried copy (carried: %d admitted)", carried(n2, "admitted"))
	}
	kid := n2ids()[1]
	farmtest.Eventually(t, 5*time.Second, "n3 holds C", func() bool { _, ok := lookup(n3.Cache, kid); return ok })

	revoke := func(want farm.RevokeStatus, within time.Duration) {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), within)
		defer cancel()
		if st, err := n2.Node.RevokeSession(ctx, s); err != nil || st != want {
			t.Fatalf("RevokeSession on n2 = %v, %v; want %v", st, err, want)
		}
	}
	if !whileDown {
		revoke(farm.RevokeApplied, 5*time.Second)
	}
	srv.Kill()
	if whileDown {
		farmtest.Eventually(t, 10*time.Second, "n2 finds Redis gone", func() bool { return !n2.Node.Connected() })
		revoke(farm.RevokePending, 500*time.Millisecond)
	}
	srv.Restart() // empty
	f.px[0].Cut()
	f.px[0].Restore()
	waitServing(t, n1, n2, n3)
	back := time.Now()
	farmtest.Eventually(t, 10*time.Second, "n2's revocation applied", func() bool { return n2.Node.PendingRevocations() == 0 })

	// S's carried copy, young still, on n3, which never held S.
	if age := time.Since(issued); age > 7*time.Second {
		t.Fatalf("S is %v old: too slow to present its carried copy young", age)
	}
	if dialAs(t, n3, "localhost", c).DidResume {
		logCarryLoss(t, f.ms)
		t.Fatal("n3 resumed the revoked S from its carried copy after the store's loss")
	}
	if got := carried(n3, "admitted"); got != 0 {
		t.Fatalf("n3 admitted %d carried copies", got)
	}
	// n1 missed the revocation's message: it reads the tombstone that n2
	// wrote back (or wrote late), well within a heal interval.
	farmtest.Eventually(t, 15*time.Second, "n1 dropped S", func() bool { _, ok := lookup(n1.Cache, s); return !ok })
	t.Logf("n1 dropped the revoked S %v after it served again", time.Since(back).Round(time.Millisecond))

	n4 := farmtest.Join(t, "n4", f.name, *f.o)
	all := append(f.ms, n4)
	waitServing(t, all...)
	for _, m := range all {
		for what, cc := range map[string]*tlstest.FrozenCache{"S": c, "C": child} {
			if dialAs(t, m, "localhost", cc).DidResume {
				logCarryLoss(t, all)
				t.Fatalf("%s resumed the revoked %s after the store's loss", m.Name, what)
			}
		}
	}
	if !dialAs(t, n4, "localhost", control).DidResume {
		logCarryLoss(t, all)
		t.Fatal("n2's untouched session did not resume on n4")
	}
}

// TestCarriedGapAfterStoreLoss: a node that reached the farm since before
// a session's issue, and whose bus went with the store when Redis
// restarted empty, refuses that session's carried copy after the restart
// (what the farm said of it meanwhile may have passed it by: counted as a
// gap), though the copy is young, and admits the copy of a session issued
// after its return. The sessions are openssl's (-sess_out on n1, whose
// path is frozen, -sess_in on n2).
func TestCarriedGapAfterStoreLoss(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	f := startCarryFarmOn(t, srv.URL(), 2, 1, 10*time.Second, carryLossTweak(func(c *farm.Config) {
		c.WriteThroughTimeout = 3 * time.Second
	}), true)
	n1, n2 := f.ms[0], f.ms[1]
	resumes := func(m *farmtest.Member, sess string) bool {
		t.Helper()
		return strings.Contains(tlstest.OpenSSL(t, m.Server.Addr, "-tls1_3", "-servername", "localhost", "-sess_in", sess), "Reused, ")
	}
	f.px[0].Freeze()
	t.Cleanup(f.px[0].Thaw)
	before := tlstest.SessionFile(t)
	tlstest.OpenSSL(t, n1.Server.Addr, "-tls1_3", "-servername", "localhost", "-sess_out", before)
	issued := time.Now()

	srv.Kill()
	srv.Restart() // empty
	waitServing(t, n2)
	// Its delivery marked again (ten times a second): refused for
	// lagging otherwise.
	time.Sleep(300 * time.Millisecond)
	if age := time.Since(issued); age > 2*time.Second {
		t.Fatalf("the session is %v old: too slow to present its carried copy young", age)
	}
	if resumes(n2, before) {
		t.Fatal("n2 resumed, after the store's loss, a session issued before it that only its ticket carried")
	}
	if got := carried(n2, "admitted"); got != 0 {
		t.Fatalf("n2 admitted a carried copy issued before the store's loss (admitted %d)", got)
	}
	if carried(n2, "gap") == 0 {
		t.Fatalf("n2 did not refuse the copy as a gap (old %d, cut_off %d, lagging %d, off %d, refused %d)",
			carried(n2, "old"), carried(n2, "cut_off"), carried(n2, "lagging"), carried(n2, "off"), carried(n2, "refused"))
	}

	// Issued after n2's return (past MaxSkew), carried: admitted.
	f.px[0].Cut()
	f.px[0].Restore()
	waitServing(t, n1)
	farmtest.Eventually(t, 10*time.Second, "n1 issues carried tickets again", func() bool {
		on, _ := n1.Node.FallbackState()
		return !on && n1.Node.Connected()
	})
	time.Sleep(300 * time.Millisecond)
	f.px[0].Freeze()
	after := tlstest.SessionFile(t)
	tlstest.OpenSSL(t, n1.Server.Addr, "-tls1_3", "-servername", "localhost", "-sess_out", after)
	if !resumes(n2, after) || carried(n2, "admitted") != 1 {
		t.Fatalf("n2 did not admit a carried copy issued after its return (admitted %d, gap %d)", carried(n2, "admitted"), carried(n2, "gap"))
	}
}
