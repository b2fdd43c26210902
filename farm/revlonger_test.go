package farm_test

import (
	"context"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestRevokeRevokedSessionWithLongerChain: n1, whose chains last 2 h,
// revokes a session; its record leaves the store and every node
// tombstones the chain until n1's end. n2, whose chains last 48 h, then
// revokes the same session: it must find it (not RevokeNotFound, though no
// node holds it and the store has no record of it) and record the chain
// revoked farm-wide until n2's end, so that a node with n2's lifetime that
// joins afterwards, reading only the store, refuses the chain for as long
// as n2 would resume it. Revoked once more, nothing is added.
func TestRevokeRevokedSessionWithLongerChain(t *testing.T) {
	t.Parallel()
	transports := map[string]func(testing.TB, string) (transport.Bus, transport.Store){
		"redis": redisTransport(redistest.URL(t)),
		"nats":  natsTransport(farmtest.ServerURL(t, "NATS", "TLSFARM_NATS_URL", "nats://127.0.0.1:4222")),
	}
	for trName, newTransport := range transports {
		for _, mode := range modes {
			t.Run(trName+"/"+mode.String(), func(t *testing.T) {
				t.Parallel()
				revokeRevokedWithLongerChain(t, newTransport, mode)
			})
		}
	}
}

// revokeRevokedWithLongerChain is TestRevokeRevokedSessionWithLongerChain
// on one transport and mode.
func revokeRevokedWithLongerChain(t *testing.T, newTransport func(testing.TB, string) (transport.Bus, transport.Store), mode farm.Mode) {
	secret := farm.NewSecret(1)
	opts := func(chain time.Duration) farmtest.Options {
		return farmtest.Options{
			NewTransport: newTransport,
			Mode:         mode,
			Secret:       secret,
			Tweak:        func(c *farm.Config) { c.TallyInterval = -1 },
			TweakCache:   func(c *session.Config) { c.MaxChainLifetime = chain },
		}
	}
	const short, long = 2 * time.Hour, 48 * time.Hour
	name := farmtest.FarmName(t)
	n1 := farmtest.Join(t, "n1", name, opts(short))
	n2 := farmtest.Join(t, "n2", name, opts(long))
	farmtest.WaitConnected(t, n1, n2)

	ids, _ := farmtest.Issue(t, n1, 1)
	id := ids[0]
	waitStored(t, n1, id)
	var rec session.Record
	for got, r := range n1.Cache.Snapshot(-1) {
		if got == id {
			rec = r
		}
	}
	if rec.Chain == 0 {
		t.Fatal("n1 does not hold its session")
	}
	revokedUntil := func(m *farmtest.Member) time.Time {
		for c, until := range m.Cache.Revocations() {
			if c == rec.Chain {
				return until
			}
		}
		return time.Time{}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if st, err := n1.Node.RevokeSession(ctx, id); err != nil || st != farm.RevokeApplied {
		t.Fatalf("n1 RevokeSession: %v, %v", st, err)
	}
	farmtest.Eventually(t, 5*time.Second, "n2 holds the chain revoked, and the store no record", func() bool {
		return !revokedUntil(n2).IsZero() && !stored(n1, id)
	})
	if u := revokedUntil(n2); u.After(rec.ChainStart.Add(short + time.Minute)) {
		t.Fatalf("n2 holds the chain revoked until %v after its start, before revoking it itself", u.Sub(rec.ChainStart))
	}

	st, err := n2.Node.RevokeSession(ctx, id)
	if err != nil || st != farm.RevokeApplied {
		t.Fatalf("n2 RevokeSession of the session n1 revoked: %v, %v; want %v", st, err, farm.RevokeApplied)
	}
	want := rec.ChainStart.Add(long - time.Minute)
	if u := revokedUntil(n2); u.Before(want) {
		t.Errorf("n2 holds the chain revoked until %v after its start, want %v", u.Sub(rec.ChainStart).Round(time.Second), long)
	}
	members := func() int {
		got, err := n1.Store.SetMembers(ctx, farm.TombstoneKey)
		if err != nil {
			t.Fatal(err)
		}
		return len(got)
	}
	before := members()

	n3 := farmtest.Join(t, "n3", name, opts(long))
	farmtest.WaitConnected(t, n3)
	farmtest.Eventually(t, 5*time.Second, "n3 read the farm's revocations", func() bool {
		return farmtest.Counter(n3.Node.Metrics(), "tlsfarm_farm_revocations_known") == 1
	})
	if u := revokedUntil(n3); u.Before(want) {
		t.Errorf("n3, joining afterwards, holds the chain revoked until %v after its start, want %v", u.Sub(rec.ChainStart).Round(time.Second), long)
	}

	if st, err := n2.Node.RevokeSession(ctx, id); err != nil || st != farm.RevokeApplied {
		t.Errorf("n2 RevokeSession once more: %v, %v", st, err)
	}
	if got := members(); got != before {
		t.Errorf("revoking once more added %d tombstones", got-before)
	}
}
