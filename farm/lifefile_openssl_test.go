package farm_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestLifecycleSurvivesRestartOpenSSL is TestLifecycleSurvivesRestart with
// openssl s_client as the client: three sessions saved with -sess_out on
// n1 reach the store; the store is killed (its data kept); n1 retires one
// and openssl resumes another from its saved file (-sess_in), which cuts
// it to its grace, while the store is down. n1 closes and n1b starts with
// n1's RevocationFile, the store still down; then the store returns. Past
// the grace neither the retired nor the cut session resumes with openssl
// on n1b, on n2 or on n3, which joins after, while the third, untouched
// session resumes on all of them. With Redis as bus and store, broadcast
// and store-only, TLS 1.2 and 1.3. A TLS 1.2 resumption gets a successor
// (and cuts its parent) only once the session is half a Lifetime old, so
// the sessions live 30s there and the parent is resumed at 15s: the checks
// after that take 10s and more with openssl under -race on a loaded
// machine (20s, resumed at 10s, ended past the Lifetime beside other test
// binaries and a CPU hog).
func TestLifecycleSurvivesRestartOpenSSL(t *testing.T) {
	t.Parallel()
	const grace = 2 * time.Second
	for _, mode := range modes {
		for _, tv := range []string{"-tls1_2", "-tls1_3"} {
			t.Run(mode.String()+"/"+tv, func(t *testing.T) {
				t.Parallel()
				var lifetime time.Duration // the default for TLS 1.3
				if tv == "-tls1_2" {
					lifetime = 30 * time.Second
				}
				srv := redistest.StartWith(t, "--appendonly", "yes", "--appendfsync", "always")
				file := filepath.Join(t.TempDir(), "revocations")
				o := &farmtest.Options{Mode: mode, WriteThrough: true, CloseServer: true,
					NewTransport: redisTransport(srv.URL()),
					TweakCache:   func(c *session.Config) { c.ResumeGrace = grace; c.Lifetime = lifetime },
					Tweak:        restartTweak(file)}
				ms, name := farmtest.Start(t, 2, o)
				ids := farmtest.NewSessions(ms[0].Cache)
				save := func() (string, session.ID) {
					sess := tlstest.SessionFile(t)
					before := len(ids())
					out := tlstest.OpenSSL(t, ms[0].Server.Addr, tv, "-servername", "localhost", "-sess_out", sess)
					if len(ids()) != before+1 {
						t.Fatalf("openssl's handshake issued %d sessions, want 1: %s", len(ids())-before, out)
					}
					id := ids()[before]
					waitStored(t, ms[0], id)
					return sess, id
				}
				resumed := func(m *farmtest.Member, sess string) bool {
					out := tlstest.OpenSSL(t, m.Server.Addr, tv, "-servername", "localhost", "-sess_in", sess)
					return strings.Contains(out, "Reused, ")
				}
				retiredS, retired := save()
				parentS, parent := save()
				controlS, _ := save()
				issued := time.Now()
				if mode == farm.Broadcast {
					farmtest.Eventually(t, 5*time.Second, "n2 holds the sessions", func() bool {
						_, ok1 := lookup(ms[1].Cache, retired)
						_, ok2 := lookup(ms[1].Cache, parent)
						return ok1 && ok2
					})
				}
				if lifetime > 0 {
					time.Sleep(time.Until(issued.Add(lifetime/2 + 200*time.Millisecond)))
				}

				srv.Kill()
				if !ms[0].Cache.Retire(retired, session.OriginAPI) {
					t.Fatal("n1 did not hold the session to retire")
				}
				n := len(ids())
				if !resumed(ms[0], parentS) {
					t.Fatal("openssl's saved session did not resume on n1 from its own cache")
				}
				if len(ids()) != n+1 {
					t.Fatal("the resumption got no successor: the parent is not cut and the test proves nothing")
				}
				cutBy := time.Now().Add(grace)
				farmtest.Eventually(t, 5*time.Second, "the retirement and the cut kept for later", func() bool {
					return farmtest.Counter(ms[0].Node.Metrics(), "tlsfarm_farm_lifecycle_backlog_length") == 2
				})
				ms[0].Node.Close()
				ms[0].Server.Close()
				if _, err := os.Stat(file + ".lifecycle"); err != nil {
					t.Fatalf("no lifecycle file after Close: %v", err)
				}

				// The restart, with the store still down; then the store
				// returns (with both sessions whole).
				n1b := farmtest.Join(t, "n1b", name, *o)
				if resumed(n1b, retiredS) || resumed(n1b, parentS) {
					t.Fatal("a retired or cut session resumed on n1b, restarted, while the store was down")
				}
				srv.Restart()
				farmtest.WaitConnected(t, ms[1], n1b)
				farmtest.Eventually(t, 10*time.Second, "n1b wrote and published what it kept", func() bool {
					return farmtest.Counter(n1b.Node.Metrics(), "tlsfarm_farm_lifecycle_backlog_length") == 0
				})
				time.Sleep(time.Until(cutBy.Add(500 * time.Millisecond)))

				n3 := farmtest.Join(t, "n3", name, *o)
				farmtest.WaitConnected(t, n3)
				all := []*farmtest.Member{n1b, ms[1], n3}
				for _, m := range all {
					for _, c := range []struct{ what, sess string }{{"retired", retiredS}, {"cut", parentS}} {
						if resumed(m, c.sess) {
							t.Errorf("openssl's %s session resumed on %s after the restart", c.what, m.Name)
						}
					}
				}
				if t.Failed() {
					farmtest.LogStats(t, all)
					t.FailNow()
				}
				// The control, as old as the others: the farm still
				// shares it, so the sessions above were refused for
				// what happened to them, not for their age.
				for _, m := range []*farmtest.Member{ms[1], n3, n1b} {
					if !resumed(m, controlS) {
						farmtest.LogStats(t, all)
						if lifetime > 0 && time.Since(issued) >= lifetime {
							t.Fatalf("the checks ended %v after the sessions were issued, past their Lifetime: too slow to prove anything", time.Since(issued))
						}
						t.Fatalf("openssl's untouched session did not resume on %s", m.Name)
					}
				}
				if _, err := os.Stat(file + ".lifecycle"); !os.IsNotExist(err) {
					t.Fatalf("the lifecycle file is still there once its items reached the farm (%v)", err)
				}
			})
		}
	}
}
