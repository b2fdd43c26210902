package natsbus_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestClusterLaggingFollowerLookupReadsLeader: a store-only farm of two
// nodes whose store is a lagCluster: n1 on the server n1 (bus and store);
// n2's bus on n1 too, so that its delivery stays current (its hits are
// not gated), and its store on n3. n1 issues P and Q, their records
// replicated to n3. Then n3's routes freeze (n3's replica lags; n2 still
// reaches n3), and P is resumed on n1: its record is cut to the cache's
// ResumeGrace in the store (on the stream's leader and n2), and n2 hears
// the cut, for a session it does not hold; and n1 consumes R
// (Node.Consume: a take from the leader). Past the grace, clients present
// P and R to n2 again and again.
//
// n2 must resume neither: it loads them from the store, and a lookup that
// a direct get answers may be answered by n3's lagging replica with P as
// it was before the cut, whole, and with R. Before the farm marked its
// lookups transport.PrimaryRead, n2 resumed P past its grace. Once the routes
// thaw, n2 resumes Q (its lookups reach the leader) and still not P.
func TestClusterLaggingFollowerLookupReadsLeader(t *testing.T) {
	t.Parallel()
	const grace = 2 * time.Second
	lc := startLagCluster(t)
	joined := 0
	ms, _ := farmtest.Start(t, 2, &farmtest.Options{
		NewTransport: func(tb testing.TB, farmName string) (transport.Bus, transport.Store) {
			joined++
			tr := openURL(tb, lc.url("n1"), farmName)
			if joined == 1 {
				return tr, tr
			}
			return tr, openURL(tb, lc.url("n3"), farmName)
		},
		Mode:       farm.StoreOnly,
		Rotation:   &farm.RotationConfig{Interval: time.Hour},
		TweakCache: func(c *session.Config) { c.ResumeGrace = grace },
		Tweak: func(cfg *farm.Config) {
			cfg.LookupTimeout = 150 * time.Millisecond
			if joined == 2 {
				// A lookup that n3's frozen routes hold ends soon, so
				// that the next handshake reads again (a read under
				// way is shared by the handshakes that want it), and
				// so many of them do not open the breaker.
				cfg.OpTimeout = 150 * time.Millisecond
				cfg.BreakerThreshold = 1 << 20
			}
			cfg.TallyInterval = -1
			// n2's store writes wait in n3's frozen routes: not an
			// outage that matters here.
			cfg.ProbeTimeout = 10 * time.Second
		},
	})
	n1, n2 := ms[0], ms[1]
	lagFarmReady(t, lc, ms)
	dial := dialResumes(t)
	ids, cs := farmtest.Issue(t, n1, 3)
	pid, p, q, rid, r := ids[0], cs[0], cs[1], ids[2], cs[2]
	pkey := "s:" + hex.EncodeToString(pid[:])
	// P's and Q's records are in the store, and n3 has them.
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	var whole []byte
	farmtest.Eventually(t, 10*time.Second, "P and Q in the store", func() bool {
		rctx, rcancel := context.WithTimeout(transport.PrimaryRead(ctx), time.Second)
		defer rcancel()
		var err error
		whole, err = n1.Store.GetRecord(rctx, pkey)
		_, qerr := n1.Store.GetRecord(rctx, "s:"+hex.EncodeToString(ids[1][:]))
		_, rerr := n1.Store.GetRecord(rctx, "s:"+hex.EncodeToString(rid[:]))
		return err == nil && qerr == nil && rerr == nil
	})
	stream := "KV_" + n2.Store.(*natsbus.Transport).Bucket()
	farmtest.Eventually(t, 10*time.Second, "n3 current", func() bool {
		return lc.c.Server("n3").JetStreamIsStreamCurrent("$G", stream)
	})

	lc.freeze(t)
	cutsHeard := func() uint64 {
		return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_lifecycle_total", "event", "cut_received")
	}
	heard := cutsHeard()
	if !dial(n1, p) {
		t.Fatal("n1 did not resume P")
	}
	resumed := time.Now()
	// The cut is a conditional write, which reads first from the
	// leader (it read with a direct get before TestClusterConditionalWritesReadLeader:
	// one sent to n3 waited in its frozen routes until OpTimeout, and
	// the write was tried again). (Written past the grace, it expires.)
	farmtest.Eventually(t, 20*time.Second, "P cut in the store (its leader)", func() bool {
		rctx, rcancel := context.WithTimeout(transport.PrimaryRead(ctx), time.Second)
		defer rcancel()
		v, err := n1.Store.GetRecord(rctx, pkey)
		return (err == nil && !bytes.Equal(v, whole)) || errors.Is(err, transport.ErrNotFound)
	})
	farmtest.Eventually(t, 5*time.Second, "n2 hears P's cut", func() bool { return cutsHeard() > heard })
	// The take reads R first from the leader (with a direct get before
	// TestClusterConditionalWritesReadLeader, which one time in three
	// went to n3 and waited in its frozen routes): tried again until R
	// is gone from the leader.
	farmtest.Eventually(t, 30*time.Second, "R consumed on n1", func() bool {
		cctx, ccancel := context.WithTimeout(ctx, time.Second)
		defer ccancel()
		if _, err := n1.Node.Consume(cctx, rid); err != nil {
			return false
		}
		_, err := n1.Store.GetRecord(transport.PrimaryRead(cctx), "s:"+hex.EncodeToString(rid[:]))
		return errors.Is(err, transport.ErrNotFound)
	})
	// The premise: n3's replica answers a plain read of P with P whole.
	stale := false
	for range 40 {
		rctx, rcancel := context.WithTimeout(ctx, 50*time.Millisecond)
		v, err := n2.Store.GetRecord(rctx, pkey)
		rcancel()
		if err == nil && bytes.Equal(v, whole) {
			stale = true
			break
		}
	}
	if !stale {
		t.Fatal("n3's replica answered none of 40 direct gets of P with P whole")
	}
	time.Sleep(time.Until(resumed.Add(grace + 500*time.Millisecond)))

	gated := func() uint64 {
		var sum uint64
		for _, r := range []string{"confirmed", "revoked", "store_error", "cut_off"} {
			sum += farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_gated_hits_total", "result", r)
		}
		return sum
	}
	lookups := func() uint64 { return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_lookups_total") }
	gatedBefore, lookupsBefore := gated(), lookups()
	// A direct get reaches n3's replica one time in three, and a lookup
	// that n1's or n2's replica answers is held in the frozen routes: so
	// many dials that some of them would be answered by n3.
	for i := range 40 {
		if dial(n2, p) {
			t.Errorf("n2 resumed P (dial %d) %v past its grace cut on n1: its lookup read n3's lagging replica",
				i+1, time.Since(resumed.Add(grace)).Round(time.Millisecond))
			break
		}
	}
	for i := range 20 {
		if dial(n2, r) {
			t.Errorf("n2 resumed R (dial %d), consumed on n1: its lookup read n3's lagging replica", i+1)
			break
		}
	}
	if g := gated() - gatedBefore; g != 0 {
		t.Errorf("n2 gated %d hits: its delivery lagged, and the gate (not the lookup) decided", g)
	}
	if l := lookups() - lookupsBefore; l == 0 {
		t.Error("n2 looked P up in the store no time")
	}
	t.Logf("n2, routes frozen: lookups %d, store answers hit %d, timeout %d",
		lookups()-lookupsBefore,
		farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_store_lookups_total", "result", "hit"),
		farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_store_lookups_total", "result", "timeout"))

	lc.thaw()
	farmtest.Eventually(t, 20*time.Second, "n2 resumes Q", func() bool { return dial(n2, q) })
	for i := range 5 {
		if t.Failed() {
			break // n2 holds what it resumed above
		}
		if dial(n2, p) || dial(n2, r) {
			t.Errorf("n2 resumed P or R (dial %d after the thaw), cut and consumed", i+1)
			break
		}
	}
}
