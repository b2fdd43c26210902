package amqpbus_test

import (
	"crypto/tls"
	"encoding/hex"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/amqpbus"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/logtest"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// expiry returns when c's copy of session id expires, and whether c holds
// it (Cut to a later time changes nothing).
func expiry(c *session.Cache, id session.ID) (time.Time, bool) {
	r, ok := c.Cut(id, time.Now().Add(24*time.Hour))
	return r.Expires, ok
}

// TestOutageOfKeptQueue: a bus-only RabbitMQ farm of two nodes; n2's
// connections are cut (a proxy between it and the broker) while n1
// retires one session and resumes another (a grace cut of its parent).
// When n2's queue was kept, n2 receives both once it reconnects, with no
// reconcile: it refuses the retired session, holds the parent only to its
// grace, and keeps a third. When its queue was deleted meanwhile, n2
// cannot know what it missed and has no store: it drops every session it
// held (as received too, with lazy peers), locally (n1 still resumes the
// third one), unless farm.Config.KeepAfterBusGap is set: then it keeps
// them, but for the one n1 retired, whose retirement n1 sends again when
// n2 asks (n1 keeps what it retired for a re-send).
func TestOutageOfKeptQueue(t *testing.T) {
	url := brokerURL(t)
	for _, tc := range []struct {
		name         string
		lost, lazy   bool
		keepAfterGap bool
	}{
		{name: "kept"},
		{name: "lost", lost: true},
		{name: "lost-lazy", lost: true, lazy: true},
		{name: "lost-keep", lost: true, keepAfterGap: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			const grace = 2 * time.Second
			var log logtest.Buffer
			base := farmtest.Options{TweakCache: func(c *session.Config) { c.ResumeGrace = grace }}
			n1, n2, proxy := cutOffPair(t, url, base, func(o2 *farmtest.Options) {
				o2.Logger = slog.New(slog.NewTextHandler(&log, nil))
				o2.Tweak = func(c *farm.Config) {
					c.LazyPeers = tc.lazy
					c.KeepAfterBusGap = tc.keepAfterGap
				}
			})
			m2, holds := countersOf(n2), holderOf(n2)

			ids := farmtest.HandshakeSessions(n1.Cache)
			retiredC, parentC, keptC := &tlstest.FrozenCache{}, &tlstest.FrozenCache{}, &tlstest.FrozenCache{}
			for _, c := range []*tlstest.FrozenCache{retiredC, parentC, keptC} {
				tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, c))
			}
			retired, parent, kept := ids()[0], ids()[1], ids()[2]
			farmtest.Eventually(t, 5*time.Second, "n2 received n1's sessions", func() bool {
				if tc.lazy {
					return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_lazy_sessions") == 3
				}
				return holds(retired) && holds(parent) && holds(kept)
			})
			fullLife, _ := expiry(n1.Cache, parent)
			sentBefore := m2("tlsfarm_farm_lifecycle_total", "event", "retire_sent") +
				m2("tlsfarm_farm_published_total", "kind", "revocation")
			connects := m2("tlsfarm_farm_connects_total")

			proxy.Cut()
			farmtest.Eventually(t, 10*time.Second, "n2's subscription down", func() bool { return !n2.Node.Connected() })
			if !n1.Cache.Retire(retired, session.OriginAPI) {
				t.Fatal("n1 did not hold the session to retire")
			}
			if !tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, parentC)).DidResume {
				t.Fatal("the parent did not resume on n1")
			}
			// Let n1's messages reach the broker (and n2's queue).
			farmtest.Eventually(t, 5*time.Second, "n1 published the retirement", func() bool {
				return farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_lifecycle_total", "event", "retire_sent") >= 1 &&
					farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_queue_length") == 0
			})
			if !tc.lazy && (!holds(retired) || !holds(parent)) {
				t.Fatal("n2 heard of the retirement or the cut while cut off")
			}
			if tc.lost {
				if _, err := brokerChannel(t, url).QueueDelete(n2.Bus.(*amqpbus.Bus).Queue(), false, false, false); err != nil {
					t.Fatal(err)
				}
			}
			proxy.Restore()
			farmtest.Eventually(t, 10*time.Second, "n2 subscribed again", func() bool {
				return n2.Node.Connected() && m2("tlsfarm_farm_connects_total") > connects
			})
			// n2 settles what it missed before it handles anything
			// published after it came back: once n1's new session is
			// there, it has.
			newC := farmtest.Client(tls.VersionTLS13, &tlstest.SharedCache{})
			received := m2("tlsfarm_farm_received_total", "kind", "session")
			tlstest.MustDial(t, n1.Server.Addr, newC)
			farmtest.Eventually(t, 5*time.Second, "n2 received n1's new session", func() bool {
				return m2("tlsfarm_farm_received_total", "kind", "session") > received
			})

			switch {
			case !tc.lost:
				if !waitFor(5*time.Second, func() bool {
					exp, ok := expiry(n2.Cache, parent)
					// n2 cuts the parent to its grace from when the
					// child reaches it.
					return !holds(retired) && ok && !exp.After(time.Now().Add(grace))
				}) {
					exp, ok := expiry(n2.Cache, parent)
					t.Logf("retired held %v; parent %v %v", holds(retired), exp, ok)
					for _, s := range n2.Node.Metrics() {
						if s.Value != 0 && !strings.Contains(s.Name, "seconds") {
							t.Log(s.Name, s.Labels, s.Value)
						}
					}
					t.Fatal("n2 did not receive the retirement and the cut")
				}
				if exp, ok := expiry(n2.Cache, kept); !ok || exp.Before(fullLife.Add(-time.Minute)) {
					t.Fatal("n2 dropped or cut a session the farm neither retired nor cut")
				}
				if got := m2("tlsfarm_farm_reconciles_total", "result", "kept"); got != 1 {
					t.Fatalf("reconciles_total{result=kept} = %d, want 1", got)
				}
				if got := m2("tlsfarm_farm_reconciles_total", "result", "dropped"); got != 0 {
					t.Fatalf("n2 dropped its cache %d times with the queue kept", got)
				}
				if tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, retiredC)).DidResume {
					t.Fatal("n2 resumed the session n1 retired while n2 was cut off")
				}
				if !tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, keptC)).DidResume {
					t.Fatal("n2 did not resume a session the farm neither retired nor cut")
				}
			case tc.keepAfterGap:
				if !holds(kept) {
					t.Fatal("n2 dropped its copies, with KeepAfterBusGap")
				}
				// What n2 missed is lost with its queue, but n1 keeps
				// its retirements and cuts for a re-send (n2 asks when
				// it subscribes again).
				if !waitFor(5*time.Second, func() bool { return !holds(retired) }) {
					t.Fatal("n2 still holds the session n1 retired, after n1's re-send")
				}
				if got := m2("tlsfarm_farm_reconciles_total", "result", "dropped"); got != 0 {
					t.Fatalf("reconciles_total{result=dropped} = %d with KeepAfterBusGap, want 0", got)
				}
			default:
				if got := m2("tlsfarm_farm_reconciles_total", "result", "dropped"); got != 1 {
					t.Fatalf("reconciles_total{result=dropped} = %d, want 1", got)
				}
				if got := m2("tlsfarm_farm_reconcile_total", "result", "dropped"); got != 3 {
					t.Fatalf("reconcile_total{result=dropped} = %d sessions, want 3", got)
				}
				wantHeld := uint64(0) // as received: n1's new session only
				if tc.lazy {
					wantHeld = 1
				}
				if holds(retired) || holds(parent) || holds(kept) || m2("tlsfarm_farm_lazy_sessions") != wantHeld {
					t.Fatal("n2 still holds sessions it cannot vouch for")
				}
				if sent := m2("tlsfarm_farm_lifecycle_total", "event", "retire_sent") +
					m2("tlsfarm_farm_published_total", "kind", "revocation"); sent != sentBefore {
					t.Fatal("n2 told the farm about the sessions it dropped")
				}
				logged := log.String()
				if strings.Count(logged, "dropped the cached sessions") != 1 {
					t.Fatalf("want one log line for the drop; log:\n%s", logged)
				}
				for _, id := range []session.ID{retired, parent, kept} {
					if strings.Contains(logged, hex.EncodeToString(id[:])) || strings.Contains(logged, hex.EncodeToString(id[:8])) {
						t.Fatalf("the log shows a session ID:\n%s", logged)
					}
				}
				if tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, retiredC)).DidResume {
					t.Fatal("n2 resumed the session n1 retired while n2 was cut off")
				}
				// The drop was n2's alone: n1 still resumes the session.
				if !tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, keptC)).DidResume {
					t.Fatal("n1 no longer resumes a session n2 dropped")
				}
			}
			// Sharing goes on: n1's new session resumes on n2.
			if !tlstest.MustDial(t, n2.Server.Addr, newC).DidResume {
				t.Fatal("n2 did not resume a session n1 issued after the outage")
			}
		})
	}
}

func waitFor(d time.Duration, cond func() bool) bool {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// cutOffPair joins two nodes of a new bus-only farm on the broker at url,
// both with the options base: n1 connects directly, n2 through the
// returned proxy, which the test cuts (Cut) to cut n2 off. o2, if not nil,
// adjusts n2's options. It returns once both are subscribed.
func cutOffPair(t *testing.T, url string, base farmtest.Options, o2 func(*farmtest.Options)) (n1, n2 *farmtest.Member, proxy *nettest.Proxy) {
	t.Helper()
	name := farmtest.FarmName(t)
	proxy = nettest.NewProxy(t, brokerAddr(url))
	base.Secret = farm.NewSecret(1)
	opts1, opts2 := base, base
	opts1.NewTransport = amqpTransport(url, nil)
	opts2.NewTransport = amqpTransport(viaProxy(t, url, proxy.Addr), nil)
	if o2 != nil {
		o2(&opts2)
	}
	n1 = farmtest.Join(t, "n1", name, opts1)
	n2 = farmtest.Join(t, "n2", name, opts2)
	farmtest.WaitConnected(t, n1, n2)
	return n1, n2, proxy
}

// countersOf returns a function that reads m's counter metric with labels.
func countersOf(m *farmtest.Member) func(metric string, labels ...string) uint64 {
	return func(metric string, labels ...string) uint64 {
		return farmtest.Counter(m.Node.Metrics(), metric, labels...)
	}
}

// holderOf returns a function that reports whether m's cache holds id.
func holderOf(m *farmtest.Member) func(id session.ID) bool {
	return func(id session.ID) bool {
		_, ok := expiry(m.Cache, id)
		return ok
	}
}
