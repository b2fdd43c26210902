package amqpbus_test

import (
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/amqpbus"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestOutageOfKeptQueueOpenSSL is TestOutageOfKeptQueue with openssl
// s_client as the client: a bus-only RabbitMQ farm of two nodes; a parent
// and a control session, saved by openssl from n1 (-sess_out), reach n2;
// n2's connections are cut while openssl resumes the parent on n1
// (-sess_in), which cuts it to its grace. When n2's queue was kept, n2
// takes the cut once it reconnects: past the grace the parent resumes on
// n2 no more, while the control does. When the queue was deleted meanwhile,
// n2 dropped its cache: the control gets a full handshake on n2, and still
// resumes on n1. TLS 1.2 and 1.3; a TLS 1.2 resumption gets a successor
// (and cuts its parent) only once the session is half a Lifetime old, so
// the sessions live 20s there (room for a loaded machine) and the parent is resumed at 10s (and the
// outage, kept, must stay under half that Lifetime: see farm's busKept).
func TestOutageOfKeptQueueOpenSSL(t *testing.T) {
	url := brokerURL(t)
	for _, lost := range []bool{false, true} {
		for _, tv := range []string{"-tls1_2", "-tls1_3"} {
			name := "kept/" + tv
			if lost {
				name = "lost/" + tv
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				const grace = 2 * time.Second
				var lifetime time.Duration // the default for TLS 1.3
				if tv == "-tls1_2" {
					lifetime = 20 * time.Second
				}
				n1, n2, proxy := cutOffPair(t, url, farmtest.Options{CloseServer: true,
					TweakCache: func(c *session.Config) { c.ResumeGrace = grace; c.Lifetime = lifetime }}, nil)
				m2, holds := countersOf(n2), holderOf(n2)
				resumed := func(m *farmtest.Member, sess string) bool {
					out := tlstest.OpenSSL(t, m.Server.Addr, tv, "-servername", "localhost", "-sess_in", sess)
					return strings.Contains(out, "Reused, ")
				}
				ids := farmtest.HandshakeSessions(n1.Cache)
				save := func() (string, session.ID) {
					sess := tlstest.SessionFile(t)
					before := len(ids())
					out := tlstest.OpenSSL(t, n1.Server.Addr, tv, "-servername", "localhost", "-sess_out", sess)
					if len(ids()) != before+1 {
						t.Fatalf("openssl's handshake issued %d sessions, want 1: %s", len(ids())-before, out)
					}
					return sess, ids()[before]
				}
				parentS, parent := save()
				controlS, control := save()
				issued := time.Now()
				farmtest.Eventually(t, 5*time.Second, "n2 received n1's sessions", func() bool {
					return holds(parent) && holds(control)
				})
				if lifetime > 0 {
					time.Sleep(time.Until(issued.Add(lifetime/2 + 200*time.Millisecond)))
				}
				connects := m2("tlsfarm_farm_connects_total")

				proxy.Cut()
				farmtest.Eventually(t, 10*time.Second, "n2's subscription down", func() bool { return !n2.Node.Connected() })
				n := len(ids())
				if !resumed(n1, parentS) {
					t.Fatal("openssl's saved session did not resume on n1")
				}
				if len(ids()) != n+1 {
					t.Fatal("the resumption got no successor: the parent is not cut and the test proves nothing")
				}
				cutBy := time.Now().Add(grace)
				farmtest.Eventually(t, 5*time.Second, "n1 published the cut", func() bool {
					return farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_queue_length") == 0 &&
						farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_published_total", "kind", "session") >= 3
				})
				if !holds(parent) {
					t.Fatal("n2 heard of the cut while cut off")
				}
				if lost {
					if _, err := brokerChannel(t, url).QueueDelete(n2.Bus.(*amqpbus.Bus).Queue(), false, false, false); err != nil {
						t.Fatal(err)
					}
				}
				proxy.Restore()
				farmtest.Eventually(t, 10*time.Second, "n2 subscribed again", func() bool {
					return n2.Node.Connected() && m2("tlsfarm_farm_connects_total") > connects
				})
				// Wait for n2 to settle the outage, but let the clients
				// below tell whether it settled it right; the counters
				// are checked last.
				settled := func() bool {
					if lost {
						return m2("tlsfarm_farm_reconciles_total", "result", "dropped") == 1
					}
					return m2("tlsfarm_farm_reconciles_total", "result", "kept") == 1 &&
						m2("tlsfarm_farm_received_total", "kind", "session") >= 3
				}
				waitFor(3*time.Second, settled)
				time.Sleep(time.Until(cutBy.Add(500 * time.Millisecond)))

				for _, m := range []*farmtest.Member{n2, n1} {
					if resumed(m, parentS) {
						farmtest.LogStats(t, []*farmtest.Member{n1, n2})
						t.Fatalf("openssl's cut session resumed on %s past its grace", m.Name)
					}
				}
				// The control is as old as the parent: it resumes (or not,
				// once n2 dropped its cache) for what happened to n2, not
				// for its age.
				if got := resumed(n2, controlS); got == lost {
					farmtest.LogStats(t, []*farmtest.Member{n1, n2})
					if lost {
						t.Fatal("openssl's untouched session resumed on n2, which lost its queue and so must have dropped it")
					}
					if lifetime > 0 && time.Since(issued) >= lifetime {
						t.Fatalf("the checks ended %v after the sessions were issued, past their Lifetime: too slow to prove anything", time.Since(issued))
					}
					t.Fatal("openssl's untouched session did not resume on n2, whose queue was kept")
				}
				if lost {
					if holds(control) {
						t.Fatal("n2 still holds the control session")
					}
					if !resumed(n1, controlS) {
						if lifetime > 0 && time.Since(issued) >= lifetime {
							t.Fatalf("the checks ended %v after the sessions were issued, past their Lifetime: too slow to prove anything", time.Since(issued))
						}
						t.Fatal("openssl's untouched session no longer resumes on n1: n2's drop was not n2's alone")
					}
				}
				if !settled() {
					farmtest.LogStats(t, []*farmtest.Member{n1, n2})
					t.Fatal("n2 did not count the outage as kept (or its cache as dropped, the queue lost)")
				}
			})
		}
	}
}
