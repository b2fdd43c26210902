package farm_test

import (
	"context"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestLaterRevocationEndReachesStore: a revocation whose tombstone is in
// the store but which the bus has not carried yet (n1's bus is held by a
// proxy) is revoked again with a later end. The store must get the later
// end too: it kept the earlier one, so that a node that reads only the
// store — one that heals from it while the bus is out (n2), one that
// joins after the earlier end (n3, n4) — took the chain as revoked only
// until then, and accepted its sessions after it. Once the bus returns, a
// node that held the earlier end and reads no store meanwhile (n5) gets
// the later one from the bus.
func TestLaterRevocationEndReachesStore(t *testing.T) {
	t.Parallel()
	url, px, via := proxiedRedis(t)
	open := openRedis
	secret := farm.NewSecret(1)
	direct := func(heal time.Duration) farmtest.Options {
		return farmtest.Options{
			NewTransport: func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
				tr := open(t, url, farmName)
				return tr, tr
			},
			Secret: secret,
			Tweak:  func(c *farm.Config) { c.HealInterval = heal; c.TallyInterval = -1; c.ProbeInterval = time.Hour },
		}
	}
	o1 := farmtest.Options{
		// n1's bus goes through the proxy, its store does not.
		NewTransport: func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
			return open(t, via, farmName), open(t, url, farmName)
		},
		Secret: secret,
		Tweak: func(c *farm.Config) {
			c.OpTimeout = 300 * time.Millisecond
			c.TallyInterval = -1
			c.ProbeInterval = time.Hour
		},
	}
	name := farmtest.FarmName(t)
	store := open(t, url, name)
	members := func() int {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		got, err := store.SetMembers(ctx, farm.TombstoneKey)
		if err != nil {
			t.Fatal(err)
		}
		return len(got)
	}
	n1 := farmtest.Join(t, "n1", name, o1)
	n2 := farmtest.Join(t, "n2", name, direct(200*time.Millisecond))
	farmtest.WaitConnected(t, n1, n2)

	const chain = 0x5eed_1a7e
	revokedUntil := func(m *farmtest.Member) time.Time {
		for c, until := range m.Cache.Revocations() {
			if c == chain {
				return until
			}
		}
		return time.Time{}
	}
	px.Freeze()
	t0 := time.Now()
	early, late := t0.Add(8*time.Second), t0.Add(time.Hour)
	n1.Node.QueueRevocations(chain, 1, early)
	farmtest.Eventually(t, 3*time.Second, "the first tombstone in the store, and n2 holds it", func() bool {
		return members() == 1 && !revokedUntil(n2).IsZero()
	})
	joined := func(node string) *farmtest.Member {
		m := farmtest.Join(t, node, name, direct(time.Hour))
		farmtest.WaitConnected(t, m)
		farmtest.Eventually(t, 5*time.Second, node+" read the farm's revocations", func() bool {
			return farmtest.Counter(m.Node.Metrics(), "tlsfarm_farm_revocations_known") == 1
		})
		return m
	}
	n5 := joined("n5")
	if u := revokedUntil(n5); u.IsZero() || u.After(early.Add(time.Second)) {
		t.Fatalf("n5 holds the chain revoked until %v from t0; want the earlier end", u.Sub(t0))
	}
	if n1.Node.PendingRevocations() != 1 {
		t.Fatal("the revocation reached the bus through a frozen proxy")
	}
	// Revoked again, with a later end, while the bus is still out.
	n1.Node.QueueRevocations(chain, 1, late)
	farmtest.Eventually(t, 3*time.Second, "a second tombstone in the store", func() bool { return members() == 2 })

	time.Sleep(time.Until(early.Add(500 * time.Millisecond)))
	want := func(m *farmtest.Member, when string) {
		t.Helper()
		if u := revokedUntil(m); u.Before(late.Add(-time.Minute)) {
			t.Errorf("%s %s: the chain revoked until %v from t0, want %v", m.Name, when, u.Sub(t0).Round(time.Millisecond), late.Sub(t0))
		}
		now := time.Now()
		rec := session.Record{State: []byte("state"), ServerName: "localhost", Expires: now.Add(time.Hour), Chain: chain, ChainStart: now.Add(-time.Minute)}
		if err := m.Cache.Insert(m.Cache.NewID(), rec, session.OriginPeer); err == nil {
			t.Errorf("%s %s: a session of the revoked chain was accepted", m.Name, when)
		}
	}
	want(n2, "after the earlier end, healing from the store")
	n3 := joined("n3")
	want(n3, "joining after the earlier end, the bus out")

	px.Thaw()
	farmtest.Eventually(t, 10*time.Second, "the revocation applied", func() bool { return n1.Node.PendingRevocations() == 0 })
	farmtest.Eventually(t, 5*time.Second, "n5 has the later end from the bus", func() bool { return revokedUntil(n5).After(late.Add(-time.Minute)) })
	want(n5, "from the bus")
	n4 := joined("n4")
	want(n4, "joining after the bus returned")
}
