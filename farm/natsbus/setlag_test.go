package natsbus_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
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
	name := farmtest.FarmName(t)
	w := openURL(t, lc.url("n1"), name)
	r := openURL(t, lc.url("n3"), name)
	ctx, cancel := context.WithTimeout(t.Context(), 120*time.Second)
	defer cancel()
	farmtest.Eventually(t, 30*time.Second, "the bucket open", func() bool {
		_, err := w.NativeTTL(ctx)
		return err == nil
	})
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
