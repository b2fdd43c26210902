package farm_test

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestPeerRecordOutlivesLifetime: a session a peer hands over lives here no
// longer than the issue time its ID carries plus this cache's Lifetime,
// whatever the peer's record says, by every way a record comes in: a
// peer's message inserted at once, a peer's message held as received
// (LazyPeers) and decoded when the client comes, and the store's record
// loaded on a miss (store-only, and write-through). n1 issues with a
// Lifetime of an hour; n2's is two seconds. Once those have passed since
// the issue, n2 must not resume the session, and it counts the record it
// cut.
func TestPeerRecordOutlivesLifetime(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	const short = 2 * time.Second
	for _, tc := range []struct {
		name string
		o    farmtest.Options
		lazy bool
		// arrived reports whether n2 has what it will resume from.
		arrived func(n2 *farmtest.Member, id session.ID) bool
	}{
		{name: "bus, inserted", o: farmtest.Options{NewTransport: busOnly(url)}, arrived: inCache},
		{name: "bus, held as received", o: farmtest.Options{NewTransport: busOnly(url)}, lazy: true, arrived: func(n2 *farmtest.Member, _ session.ID) bool {
			return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_lazy_total", "event", "kept") >= 1
		}},
		{name: "store, store-only", o: farmtest.Options{NewTransport: redisTransport(url), Mode: farm.StoreOnly}, arrived: stored},
		{name: "store, write-through", o: farmtest.Options{NewTransport: redisTransport(url), Mode: farm.StoreOnly, WriteThrough: true}, arrived: stored},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o := tc.o
			o.Secret = farm.NewSecret(1)
			name := farmtest.FarmName(t)
			o.TweakCache = func(c *session.Config) { c.Lifetime = time.Hour }
			n1 := farmtest.Join(t, "n1", name, o)
			o.TweakCache = func(c *session.Config) { c.Lifetime = short }
			o.Tweak = func(c *farm.Config) { c.LazyPeers = tc.lazy }
			n2 := farmtest.Join(t, "n2", name, o)
			farmtest.WaitConnected(t, n1, n2)

			ids, cs := farmtest.Issue(t, n1, 1)
			issued, ok := n1.Cache.IssuedAt(ids[0])
			if !ok {
				t.Fatal("n1 cannot read its own ID")
			}
			farmtest.Eventually(t, 5*time.Second, "the session reached n2's side", func() bool { return tc.arrived(n2, ids[0]) })
			if tc.arrived(n2, ids[0]) && time.Since(issued) > short {
				t.Skip("the machine is too slow: the session arrived after n2's Lifetime")
			}
			time.Sleep(time.Until(issued.Add(short + 200*time.Millisecond)))
			if r, ok := lookup(n2.Cache, ids[0]); ok {
				t.Errorf("n2 holds the session until %v, past its issue (%v) plus n2's Lifetime", r.Expires, issued)
			}
			if tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, cs[0])).DidResume {
				t.Fatalf("n2 resumed a session issued %v ago, past its Lifetime of %v", time.Since(issued), short)
			}
			if got := farmtest.Counter(n2.Cache.Metrics(), "tlsfarm_cache_inserts_clamped_total"); got < 1 {
				t.Errorf("tlsfarm_cache_inserts_clamped_total = %d, want at least 1", got)
			}
		})
	}
}

func inCache(n2 *farmtest.Member, id session.ID) bool {
	_, ok := lookup(n2.Cache, id)
	return ok
}

// TestLoadedRecordActsOnItsClampedLife: a TLS 1.2 handshake that resumes a
// session loaded from the store decides between a reissued ticket (the
// same session) and a successor by the session's life here, cut to its
// issue time plus this cache's Lifetime, not by the life the peer's
// record claims. n1 issues with a Lifetime of an hour; n2's is four
// seconds. The client resumes on n2 more than half n2's Lifetime after
// the issue, so it must get a successor, which resumes on n2 once the
// first session's four seconds have passed. Before, n2 read the hour
// of the peer's record and reissued the first session: the client's
// next handshake there, past four seconds, was a full one.
func TestLoadedRecordActsOnItsClampedLife(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	const short = 4 * time.Second
	o := farmtest.Options{NewTransport: redisTransport(url), Mode: farm.StoreOnly, Secret: farm.NewSecret(1)}
	name := farmtest.FarmName(t)
	o.TweakCache = func(c *session.Config) { c.Lifetime = time.Hour }
	n1 := farmtest.Join(t, "n1", name, o)
	o.TweakCache = func(c *session.Config) { c.Lifetime = short }
	n2 := farmtest.Join(t, "n2", name, o)
	farmtest.WaitConnected(t, n1, n2)

	ids := farmtest.HandshakeSessions(n1.Cache)
	cc := farmtest.Client(tls.VersionTLS12, tls.NewLRUClientSessionCache(1))
	tlstest.MustDial(t, n1.Server.Addr, cc)
	got := ids()
	if len(got) != 1 {
		t.Fatalf("n1 issued %d sessions", len(got))
	}
	issued, _ := n1.Cache.IssuedAt(got[0])
	farmtest.Eventually(t, 5*time.Second, "the store holds the session", func() bool { return stored(n2, got[0]) })
	time.Sleep(time.Until(issued.Add(short/2 + 500*time.Millisecond)))
	if !tlstest.MustDial(t, n2.Server.Addr, cc).DidResume {
		t.Fatal("n2 did not resume n1's session")
	}
	if time.Since(issued) >= short {
		t.Skip("the machine is too slow: the resumption came after n2's Lifetime")
	}
	time.Sleep(time.Until(issued.Add(short + 500*time.Millisecond)))
	if !tlstest.MustDial(t, n2.Server.Addr, cc).DidResume {
		t.Fatalf("n2 did not resume what it gave the client %v after n1's issue: it reissued a session that ended here at %v", short/2+500*time.Millisecond, short)
	}
}
