package farm_test

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus/natsembed"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/testenv"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
)

// TestNATSSlowConsumerDropsRevocation: three nodes over a private NATS
// server and a Redis store, with the default tally interval. n1 stops
// keeping up with the bus (its deliveries held, PendingMsgs slowPending),
// and nats.go drops what n2 then publishes, and the revocation n3 makes of
// a session n2 issued and n1 holds, while n1's connection stays up. Once n1
// catches up it must stop resuming the revoked session at once: the
// transport reports the drop as a gap in the subscription, and n1 reads
// the store's revocations and reconciles as after an outage. Before, n1
// learnt of the loss only from a peer's tally, an interval or more later
// (1.2 to 2.1 s here), and resumed the revoked session meanwhile.
func TestNATSSlowConsumerDropsRevocation(t *testing.T) {
	t.Parallel()
	var srv *natsembed.Server
	testenv.OnFreePort(t, func(port int) (err error) {
		srv, err = natsembed.Start(&natsembed.Config{Port: port, Dir: t.TempDir(), StartTimeout: testenv.StartTimeout})
		return err
	})
	t.Cleanup(func() { srv.Shutdown() })
	natsURL := srv.URL()
	o := &farmtest.Options{NewTransport: stallTransport(natsURL, redistest.URL(t))}
	ms, _ := farmtest.Start(t, 3, o)
	n1, n2, n3 := ms[0], ms[1], ms[2]
	ids, cs := farmtest.Issue(t, n2, 1)
	s, client := ids[0], cs[0]
	farmtest.Eventually(t, 5*time.Second, "n1 and n3 hold the session", func() bool {
		_, a := lookup(n1.Cache, s)
		_, b := lookup(n3.Cache, s)
		return a && b
	})
	waitStored(t, n2, s)
	if !tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, client)).DidResume {
		t.Fatal("the session does not resume on n1 before the test")
	}
	b1 := n1.Bus.(*stallBus)
	gaps := farmtest.Counter(n1.Node.Metrics(), gapsMetric, "reason", "dropped")

	// A spy on the farm's subject sees n3's revocation reach the server.
	revs := spyMessages(t, natsURL, b1.Subject(), farm.EnvTypeRev, n3.Node.Instance())

	// n1 falls behind, and its subscription fills.
	b1.hold()
	fillHeld(t, n2.Node, b1)
	ctx := context.Background()
	before := b1.Dropped()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if st, err := n3.Node.RevokeSession(rctx, s); err != nil || st != farm.RevokeApplied {
		t.Fatalf("RevokeSession on n3 = %v, %v; want applied", st, err)
	}
	farmtest.Eventually(t, 5*time.Second, "n3's revocation reached the server", func() bool { return revs.Load() > 0 })
	if err := b1.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	if b1.Dropped() <= before {
		t.Fatalf("nats.go dropped nothing after n3's revocation (%d before, %d after): n1 may have it queued", before, b1.Dropped())
	}
	// n1's delivery is held: it cannot have heard of anything yet.
	if _, ok := lookup(n1.Cache, s); !ok {
		t.Fatal("n1 dropped the revoked session while its delivery was held")
	}
	t.Logf("nats.go dropped %d messages for n1 (%d slow consumer episodes)", b1.Dropped(), b1.SlowConsumers())

	b1.release()
	caughtUp := time.Now()
	resumed := 0
	for tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, client)).DidResume {
		resumed++
		if time.Since(caughtUp) > 10*time.Second {
			t.Fatal("n1 still resumes the revoked session 10s after it caught up")
		}
		time.Sleep(5 * time.Millisecond)
	}
	took := time.Since(caughtUp)
	t.Logf("n1 stopped resuming the revoked session %v after it caught up (%d resumptions meanwhile)", took.Round(time.Millisecond), resumed)
	// The default tally interval is 1 s: the tallies find a loss an
	// interval or more after the node caught up.
	if took > 500*time.Millisecond {
		t.Errorf("n1 resumed the revoked session for %v after it caught up: the drop was not settled at once", took.Round(time.Millisecond))
	}
	if got := farmtest.Counter(n1.Node.Metrics(), gapsMetric, "reason", "dropped"); got == gaps {
		t.Error("n1's subscription reported no gap for the drop")
	}
	for _, m := range ms {
		if tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, client)).DidResume {
			t.Errorf("%s resumed the revoked session", m.Name)
		}
	}
}
