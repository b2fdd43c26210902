package farm_test

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestLifecycleSurvivesRestartStoreFaults is TestLifecycleSurvivesRestart
// with the two other store faults. n1 retires a session and resumes
// another (a grace cut of its parent) while the store is down, closes,
// and n1b starts with n1's Config.RevocationFile, the store still down.
//
//   - paused: the store hangs (SIGSTOP), so writes time out rather than
//     fail; n1's Close still returns within a bound. Once the store
//     resumes it loses the retired session and holds the parent for its
//     grace at most, and the lifecycle file goes.
//   - empty: the store is killed and restarts without its data. n2
//     writes back the sessions it holds (both sessions whole: broadcast
//     copies, or in store-only mode copies as loaded from the store)
//     while n1b's writes are held up; then n1b writes and
//     publishes what it kept, which must undo that write-back, while a
//     control session that n2 made before the outage is written back and
//     resumes on every node.
//   - empty-race: the same, n1b's writes not held up, so that n1b may
//     publish before n2 subscribes again and n2 write back after n1b
//     wrote. n2 then misses the messages (pub/sub keeps nothing) and its
//     reconcile gives up as the store lost its data; what saves the
//     promise is the re-send protocol: n2 asks before it writes back and
//     again after, and n1b re-sends what it holds (see resendState and
//     TestWriteBackWaitsForResend).
//
// In every case, past the grace neither the retired nor the cut session resumes
// on n1b, on n2 or on n3, which joins then. With Redis as bus and store,
// broadcast and store-only.
func TestLifecycleSurvivesRestartStoreFaults(t *testing.T) {
	t.Parallel()
	const grace = 4 * time.Second
	for _, fault := range []string{"paused", "empty", "empty-race"} {
		for _, mode := range []farm.Mode{farm.Broadcast, farm.StoreOnly} {
			t.Run(fault+"/"+mode.String(), func(t *testing.T) {
				t.Parallel()
				hold := fault == "empty"
				srv := redistest.Start(t) // no persistence: a restart is empty
				file := filepath.Join(t.TempDir(), "revocations")
				o := &farmtest.Options{Mode: mode, WriteThrough: true,
					NewTransport: stuckTransport(srv.URL(), ""),
					TweakCache:   func(c *session.Config) { c.ResumeGrace = grace },
					Tweak:        restartTweak(file)}
				ms, name := farmtest.Start(t, 2, o)
				rc := redis.NewClient(&redis.Options{Addr: srv.Addr()})
				defer rc.Close()
				dial := func(m *farmtest.Member, c *tlstest.FrozenCache) bool {
					return tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume
				}

				ids, cs := farmtest.Issue(t, ms[0], 2)
				retired, parent, retiredC, parentC := ids[0], ids[1], cs[0], cs[1]
				ids, cs = farmtest.Issue(t, ms[1], 1)
				control, controlC := ids[0], cs[0]
				for _, id := range []session.ID{retired, parent, control} {
					waitStored(t, ms[0], id)
				}
				// n2 holds both sessions whole: broadcast copies, or in
				// store-only mode copies inserted as a node that had loaded
				// them from the store would hold them (a resumption there
				// would cut them).
				if mode == farm.StoreOnly {
					copyToPeer(t, ms[0], ms[1], retired, parent)
				}
				farmtest.Eventually(t, 5*time.Second, "n2 holds both sessions", func() bool {
					_, ok1 := lookup(ms[1].Cache, retired)
					_, ok2 := lookup(ms[1].Cache, parent)
					return ok1 && ok2
				})

				if fault == "paused" {
					srv.Pause()
				} else {
					srv.Kill() // and restarted empty below
				}
				if !ms[0].Cache.Retire(retired, session.OriginAPI) {
					t.Fatal("n1 did not hold the session to retire")
				}
				if !dial(ms[0], parentC) {
					t.Fatal("the parent did not resume on n1 from its own cache")
				}
				cutBy := time.Now().Add(grace)
				farmtest.Eventually(t, 5*time.Second, "the retirement and the cut kept for later", func() bool {
					return farmtest.Counter(ms[0].Node.Metrics(), "tlsfarm_farm_lifecycle_backlog_length") == 2
				})
				start := time.Now()
				ms[0].Node.Close()
				if d := time.Since(start); d > 2*time.Second {
					t.Fatalf("n1's Close took %v with the store %s", d, fault)
				} else {
					t.Logf("n1's Close took %v with the store %s", d, fault)
				}
				ms[0].Server.Close()
				if _, err := os.Stat(file + ".lifecycle"); err != nil {
					t.Fatalf("no lifecycle file after Close: %v", err)
				}

				// The restart, with the store still down.
				n1b := farmtest.Join(t, "n1b", name, *o)
				sw := n1b.Store.(*stuckWrites)
				sw.down.Store(hold)
				farmtest.Eventually(t, 5*time.Second, "n1b keeps what n1 kept", func() bool {
					return farmtest.Counter(n1b.Node.Metrics(), "tlsfarm_farm_lifecycle_backlog_length") == 2
				})
				for what, c := range map[string]*tlstest.FrozenCache{"retired": retiredC, "cut": parentC} {
					if dial(n1b, c) {
						t.Fatalf("the %s session resumed on n1b, restarted, while the store was %s", what, fault)
					}
				}

				// The store returns.
				if fault == "paused" {
					srv.Resume()
				} else {
					srv.Restart()
				}
				back := time.Now()
				farmtest.WaitConnected(t, ms[1], n1b)
				if hold {
					farmtest.Eventually(t, 5*time.Second, "n2 wrote back what it holds", func() bool {
						return farmtest.Counter(ms[1].Node.Metrics(), "tlsfarm_farm_written_back_total") > 0
					})
					if _, ok := stuckTTL(t, rc, ms[1], retired); !ok {
						t.Fatal("n2 did not write back the retired session: the test proves nothing")
					}
					sw.down.Store(false)
				}
				farmtest.Eventually(t, 5*time.Second, "the lifecycle backlog emptied and the file went", func() bool {
					_, err := os.Stat(file + ".lifecycle")
					return farmtest.Counter(n1b.Node.Metrics(), "tlsfarm_farm_lifecycle_backlog_length") == 0 && os.IsNotExist(err)
				})
				if d := farmtest.Counter(n1b.Node.Metrics(), "tlsfarm_farm_lifecycle_backlog_dropped_total"); d != 0 {
					t.Fatalf("%d retirements or cuts dropped", d)
				}
				if fault == "paused" {
					// The store kept its data: it must lose the retired
					// session and keep the parent for its grace only.
					farmtest.Eventually(t, 5*time.Second, "the store lost the retired session and holds the parent for its grace only", func() bool {
						if _, ok := stuckTTL(t, rc, ms[1], retired); ok {
							return false
						}
						ttl, ok := stuckTTL(t, rc, ms[1], parent)
						return !ok || ttl <= time.Until(cutBy)+time.Second
					})
				} else {
					// The store lost its data: n2 writes back what it
					// holds, the control session among them, and the
					// retired session and the parent whole are not in it.
					farmtest.Eventually(t, 5*time.Second, "the control session written back, the retired session gone and the parent cut", func() bool {
						if _, ok := stuckTTL(t, rc, ms[1], control); !ok {
							return false
						}
						if _, ok := stuckTTL(t, rc, ms[1], retired); ok {
							return false
						}
						ttl, ok := stuckTTL(t, rc, ms[1], parent)
						return !ok || ttl <= time.Until(cutBy)+time.Second
					})
				}
				t.Logf("the store settled %v after it returned", time.Since(back))

				time.Sleep(time.Until(cutBy.Add(500 * time.Millisecond)))
				fresh := farmtest.Join(t, "n3", name, *o)
				farmtest.WaitConnected(t, fresh)
				all := []*farmtest.Member{n1b, ms[1], fresh}
				for _, m := range all {
					for what, c := range map[string]*tlstest.FrozenCache{"retired": retiredC, "cut": parentC} {
						if dial(m, c) {
							farmtest.LogStats(t, all)
							t.Fatalf("the %s session resumed on %s after the restart (store %s)", what, m.Name, fault)
						}
					}
				}
				for what, id := range map[string]session.ID{"retired": retired, "cut": parent} {
					if ttl, ok := stuckTTL(t, rc, ms[1], id); ok {
						t.Fatalf("the store holds the %s session for %v past its grace (store %s)", what, ttl, fault)
					}
				}
				if fault == "empty" {
					for _, m := range all {
						if !dial(m, controlC) {
							farmtest.LogStats(t, all)
							t.Fatalf("the control session did not resume on %s after the store returned empty", m.Name)
						}
					}
				}
			})
		}
	}
}
