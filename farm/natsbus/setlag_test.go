package natsbus_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
)

// TestClusterPrimarySetMembersLaggingReplica: a set read under
// transport.PrimaryRead (a node's heal reads the farm's revocations so)
// while n3's routes are frozen, n3's replica of the stream behind what
// n1 added, must return every member n1 added before it, or an error:
// never a short set. SetMembers reads through an ordered consumer, which
// nats-server may place on any replica (one that delivers what n3 has,
// say), so reads from a client on n3 and from one on n1 (whose consumer
// may be placed on n3), five of each at once, first of a set n3 has none
// of, then of one n3 has in part. Once the routes thaw, n3 reads the set
// whole.
//
// It is a guard: on nats-server 2.15 the frozen reads fail (the consumer's
// creation or its delivery waits in the frozen routes, or the JetStream
// API has no meta leader) rather than answer from n3's replica, with or
// without SetMembers' check of a listing against the leader; a replica
// whose stream lags while its server still places consumers would answer.
func TestClusterPrimarySetMembersLaggingReplica(t *testing.T) {
	t.Parallel()
	lc := startLagCluster(t)
	w, r, ctx := lc.open(t, 120*time.Second, false)
	lc.follow(t, r, w.Bucket())
	until := time.Now().Add(time.Hour)
	var added []string
	add := func(prefix string) {
		t.Helper()
		for i := range 3 {
			m := fmt.Sprintf("%s-%d", prefix, i)
			if err := w.SetAdd(ctx, "set", []byte(m), until); err != nil {
				t.Fatal(err)
			}
			added = append(added, m)
		}
	}
	// whole reports whether members holds every member added.
	whole := func(members [][]byte) (bool, string) {
		got := map[string]bool{}
		for _, b := range members {
			got[string(b)] = true
		}
		for _, a := range added {
			if !got[a] {
				return false, a
			}
		}
		return true, ""
	}
	check := func(phase string) {
		t.Helper()
		var wg sync.WaitGroup
		var mu sync.Mutex
		answered, failed := 0, 0
		for _, reader := range []struct {
			name string
			tr   *natsbus.Transport
		}{{"n3", r}, {"n1", w}} {
			for range 5 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rctx, rcancel := context.WithTimeout(transport.PrimaryRead(ctx), 6*time.Second)
					defer rcancel()
					m, err := reader.tr.SetMembers(rctx, "set")
					mu.Lock()
					defer mu.Unlock()
					if err != nil {
						failed++
						return
					}
					answered++
					if ok, missing := whole(m); !ok {
						t.Errorf("%s: SetMembers under PrimaryRead on %s = %d members, without %s (n1 added %d): a short set from n3's lagging replica",
							phase, reader.name, len(m), missing, len(added))
					}
				}()
			}
		}
		wg.Wait()
		t.Logf("%s: %d reads answered in full, %d failed", phase, answered, failed)
	}
	readWhole := func() {
		t.Helper()
		farmtest.Eventually(t, 30*time.Second, "n3 reads the set whole", func() bool {
			rctx, rcancel := context.WithTimeout(transport.PrimaryRead(ctx), 5*time.Second)
			defer rcancel()
			m, err := r.SetMembers(rctx, "set")
			ok, _ := whole(m)
			return err == nil && ok
		})
	}

	lc.freeze(t)
	add("first")
	check("none on n3")
	lc.thaw()
	readWhole()

	lc.freeze(t)
	add("second")
	check("part on n3")
	lc.thaw()
	readWhole()
}

// TestClusterHealThroughLaggingReplica: a broadcast, write-through farm
// of two nodes whose store is a lagCluster (n1 on server n1; n2's store on
// n3, its bus a server of its own behind a proxy, as in
// TestClusterLaggingFollowerGateReadsLeader). n2 issues H. n3's
// routes freeze, n2's bus is cut (the revocation's message is lost to
// it), and n1 revokes H. n2's bus comes back while n3 still lags: its
// heal reads the farm's revocations (the set's version, then the set,
// under PrimaryRead) through n3. n2 must not resume H, then or once n3's
// routes thaw and a heal has read the set: a heal that took a short set
// from n3's replica for the set at the leader's version would never read
// H's tombstone again. A session issued on n2 after the thaw resumes.
//
// A guard: the heals through frozen routes fail (see
// TestClusterPrimarySetMembersLaggingReplica) with or without
// SetMembers' check against the leader.
func TestClusterHealThroughLaggingReplica(t *testing.T) {
	// How soon after the thaw a heal must have read the set.
	const healBound = 10 * time.Second
	if os.Getenv("TLSFARM_LONG") != "1" {
		// A heal sent into the frozen routes waited out its bound
		// (SetVersion's, then SetMembers' 55 s) before the requests
		// to the leader were asked again each attempt: 8–65 s a run,
		// too long and too variable for CI. Since, 9–12 s (once 31 s)
		// in six runs, three under a CPU hog; a guard, it passes with
		// or without SetMembers' check. TestClusterLeaderReadsAnswerAfterThaw
		// covers the requests' asking again in less time.
		t.Skip("a long guard (9–31 s): run with TLSFARM_LONG=1")
	}
	t.Parallel()
	const maxLag = 150 * time.Millisecond
	lc := startLagCluster(t)
	n1, n2, busPath := startGatedLagFarm(t, lc, maxLag, 500*time.Millisecond)
	dial := dialResumes(t)
	h := &tlstest.FrozenCache{}
	ids := farmtest.HandshakeSessions(n2.Cache)
	dial(n2, h)
	hid := ids()[len(ids())-1]
	farmtest.Eventually(t, 5*time.Second, "n2 resumes H", func() bool { return dial(n2, h) })
	farmtest.Eventually(t, 10*time.Second, "H's record in the store", func() bool {
		ctx, cancel := context.WithTimeout(transport.PrimaryRead(t.Context()), time.Second)
		defer cancel()
		_, err := n1.Store.GetRecord(ctx, "s:"+hex.EncodeToString(hid[:]))
		return err == nil
	})
	farmtest.Eventually(t, 10*time.Second, "n3 current", func() bool {
		return lc.c.Server("n3").JetStreamIsStreamCurrent("$G", "KV_"+n2.Store.(*natsbus.Transport).Bucket())
	})
	reads := func() uint64 {
		return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_tombstone_reads_total", "result", "read")
	}

	lc.freeze(t)
	busPath.Cut()
	bus := n2.Bus.(*natsbus.Transport)
	ping := func() error {
		pctx, pcancel := context.WithTimeout(t.Context(), time.Second)
		defer pcancel()
		return bus.Ping(pctx)
	}
	farmtest.Eventually(t, 10*time.Second, "n2's bus cut off", func() bool { return ping() != nil && !n2.Node.Connected() })
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if st, err := n1.Node.RevokeSession(ctx, hid); err != nil || st != farm.RevokeApplied {
		t.Fatalf("RevokeSession = %v, %v", st, err)
	}
	marker := n2.Bus.(transport.DeliveryMarker)
	farmtest.Eventually(t, 5*time.Second, "n2's delivery lags", func() bool {
		return time.Since(marker.DeliveredThrough()) > 2*maxLag
	})
	busPath.Restore()
	farmtest.Eventually(t, 20*time.Second, "n2's bus back", func() bool { return ping() == nil && n2.Node.Connected() })
	gated := func(result string) uint64 {
		return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_gated_hits_total", "result", result)
	}
	defer func() {
		t.Logf("n2's gated hits: confirmed %d, revoked %d, store_error %d, cut_off %d",
			gated("confirmed"), gated("revoked"), gated("store_error"), gated("cut_off"))
	}()
	for i := range 20 {
		if dial(n2, h) {
			t.Fatalf("n2 resumed H (dial %d) after its bus came back, n3's routes frozen", i+1)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// H's chain, the one revocation n1 holds: n2 has not heard of it.
	var chain uint64
	chains := 0
	for c := range n1.Cache.Revocations() {
		chain = c
		chains++
	}
	if chains != 1 {
		t.Fatalf("n1 holds %d revocations; want H's", chains)
	}
	if n2.Cache.Revoked(chain) {
		t.Fatal("n2 learned of H's revocation with n3's routes frozen and its bus cut while it was made")
	}
	before := reads()
	lc.thaw()
	thawed := time.Now()
	// A heal that began while the routes were frozen waited out its
	// bound after the thaw (seen 0.1-55 s) before the leader's get asked
	// again each attempt: a goroutine dump showed it in SetVersion's
	// leader get (leaderLastMsg), whose request went into the frozen
	// route and was never answered, bounded by n2's OpTimeout (30 s
	// here). It asks again within a second since (see
	// TestClusterLeaderReadsAnswerAfterThaw), and so do SetMembers'
	// requests to the leader (below).
	farmtest.Eventually(t, 90*time.Second, "a heal of n2 reads the set", func() bool { return reads() > before })
	healed := time.Since(thawed)
	t.Logf("a heal read the set %v after the thaw", healed)
	// A heal's SetMembers read the server's clock (the stream's
	// information) and made its watcher's consumer with requests to the
	// leader that were not asked again: one sent into the frozen routes
	// waited out the read's bound (OpTimeout and the set's allowance, 55 s
	// here), and the gate stayed on meanwhile. Each is asked again per
	// attempt now, as the leader's gets are.
	if healed > healBound {
		t.Errorf("a heal of n2 read the set %v after the thaw; want within %v", healed.Round(time.Millisecond), healBound)
	}
	farmtest.Eventually(t, 10*time.Second, "n2 holds H's revocation", func() bool { return n2.Cache.Revoked(chain) })
	// A session issued now resumes: n2 resumes sessions, not H.
	d := &tlstest.FrozenCache{}
	dial(n2, d)
	farmtest.Eventually(t, 20*time.Second, "n2 resumes a session issued after the thaw", func() bool { return dial(n2, d) })
	for i := range 20 {
		if dial(n2, h) {
			t.Fatalf("n2 resumed H (dial %d) once n3 thawed and a heal read the set", i+1)
		}
	}
}
