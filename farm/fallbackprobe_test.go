package farm_test

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/metric"
)

// quietSubscription is redisTransport with a subscription that stays up
// through a hang of up to a minute (HealthInterval), as one does while
// its connection holds: only the health probe can tell the node.
func quietSubscription(url string) func(testing.TB, string) (transport.Bus, transport.Store) {
	return func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
		tr, err := redisbus.Open(url, farmName)
		if err != nil {
			t.Fatal(err)
		}
		tr.HealthInterval = time.Minute
		t.Cleanup(func() { tr.Close() })
		return tr, tr
	}
}

// fallbackIssued returns how many fallback tickets m's cache has issued.
func fallbackIssued(m *farmtest.Member) float64 {
	n, _ := metric.Value(m.Cache.Metrics(), "tlsfarm_cache_fallback_tickets_total")
	return n
}

// TestFallbackOnProbe: a stateful farm with farm-wide ticket keys, whose
// transport hangs (n1's Redis connections held by a proxy, or Redis
// itself stopped with SIGSTOP) while the subscription stays up. Once n1's
// health probe finds the transport hung (Connected is false), and before
// any store write has failed, n1's next handshake must issue a fallback
// ticket, not a cached session, and that ticket must resume on n2. When
// the transport answers again, fallback turns off within a few probe
// intervals, and n1's next handshake issues a cached session that resumes
// on n2.
func TestFallbackOnProbe(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		// hang returns the URL n1 reaches Redis by, a function that
		// hangs the transport and one that makes it answer again.
		hang func(t *testing.T) (n1URL, n2URL string, freeze, thaw func())
	}{
		{"proxy-freeze", func(t *testing.T) (string, string, func(), func()) {
			url, px, via := proxiedRedis(t)
			t.Cleanup(px.Thaw)
			return via, url, px.Freeze, px.Thaw
		}},
		{"sigstop", func(t *testing.T) (string, string, func(), func()) {
			srv := redistest.Start(t)
			t.Cleanup(srv.Resume)
			return srv.URL(), srv.URL(), srv.Pause, srv.Resume
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n1URL, n2URL, freeze, thaw := tc.hang(t)
			o := farmtest.Options{
				Secret:   farm.NewSecret(1),
				Rotation: &farm.RotationConfig{Interval: time.Hour},
				Tweak: func(c *farm.Config) {
					c.OpTimeout = 300 * time.Millisecond
					c.ProbeInterval = 200 * time.Millisecond
					c.ProbeTimeout = 300 * time.Millisecond
				},
			}
			name := farmtest.FarmName(t)
			o.NewTransport = quietSubscription(n1URL)
			n1 := farmtest.Join(t, "n1", name, o)
			o.NewTransport = quietSubscription(n2URL)
			n2 := farmtest.Join(t, "n2", name, o)
			ms := []*farmtest.Member{n1, n2}
			farmtest.WaitConnected(t, ms...)
			agreed(t, ms, 1)
			ids := farmtest.HandshakeSessions(n1.Cache)
			if on, _ := n1.Node.FallbackState(); on {
				t.Fatal("n1 issues fallback tickets on a healthy farm")
			}

			freeze()
			farmtest.Eventually(t, 5*time.Second, "n1 finds the transport hung", func() bool {
				return !n1.Node.Connected()
			})
			// What the test is about: only the probe knows.
			if !n1.Node.BusUp() || n1.Node.StoreFailing() {
				t.Fatalf("n1's subscription up: %v, store failing: %v; want a hang only the probe has found",
					n1.Node.BusUp(), n1.Node.StoreFailing())
			}
			before := fallbackIssued(n1)
			down := &tlstest.FrozenCache{}
			tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, down))
			if got := ids(); len(got) != 0 {
				t.Errorf("n1 issued %d cached session(s) while its probe found the transport hung, want a fallback ticket", len(got))
			}
			if got := fallbackIssued(n1); got != before+1 {
				t.Errorf("n1 issued %v fallback tickets for one handshake while its probe found the transport hung, want 1", got-before)
			}
			if !tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, down)).DidResume {
				farmtest.LogStats(t, ms)
				t.Fatal("what n1 issued while its probe found the transport hung does not resume on n2")
			}

			thaw()
			back := time.Now()
			farmtest.Eventually(t, 5*time.Second, "n1 back on the farm, fallback off", func() bool {
				on, _ := n1.Node.FallbackState()
				return n1.Node.Connected() && !on
			})
			t.Logf("fallback off %v after the transport answered again", time.Since(back).Round(time.Millisecond))
			before = fallbackIssued(n1)
			up := &tlstest.FrozenCache{}
			tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, up))
			got := ids()
			if len(got) != 1 {
				t.Fatalf("n1 issued %d cached sessions for one handshake once the transport answered, want 1", len(got))
			}
			if n := fallbackIssued(n1); n != before {
				t.Fatalf("n1 issued %v fallback tickets once the transport answered, want none", n-before)
			}
			waitStored(t, n1, got[0])
			if !tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, up)).DidResume {
				farmtest.LogStats(t, ms)
				t.Fatal("n1's cached session, issued once the transport answered, does not resume on n2")
			}
		})
	}
}
