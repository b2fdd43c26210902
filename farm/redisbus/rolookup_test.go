package redisbus_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestClusterReadOnlyLookupReadsMaster: a store-only farm of two nodes on
// a Redis Cluster of three masters with a replica each, its URL set
// read_only=true (reads go to replicas; the bus subscribes on the
// masters, so the nodes' delivery stays current and their hits are not
// gated). n1 issues P and Q, replicated. Then every replica is cut off
// from its master, and P is resumed on n1: its record is cut to the
// cache's ResumeGrace on its master; and n1 consumes R (Node.Consume),
// which takes R's record from its master. Past the grace, clients present
// P and R to n2, which holds neither.
//
// n2 must resume neither: a lookup that a replica answers finds P as it
// was before the cut, whole, and R still there. Before the farm marked
// its lookups transport.PrimaryRead, n2 resumed both. n2 still resumes Q.
func TestClusterReadOnlyLookupReadsMaster(t *testing.T) {
	t.Parallel()
	const grace = 2 * time.Second
	c, cut := startCuttable(t)
	ms, _ := farmtest.Start(t, 2, &farmtest.Options{
		NewTransport: transportAt(c.URL("read_only=true&reload=1s")),
		Mode:         farm.StoreOnly,
		Rotation:     &farm.RotationConfig{Interval: time.Hour},
		TweakCache:   func(c *session.Config) { c.ResumeGrace = grace },
		Tweak: func(cfg *farm.Config) {
			cfg.LookupTimeout = time.Second
			cfg.TallyInterval = -1
		},
	})
	n1, n2 := ms[0], ms[1]
	farmtest.WaitRevocationsKnown(t, ms...)
	dial := func(m *farmtest.Member, cc tls.ClientSessionCache) bool {
		t.Helper()
		return tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, cc)).DidResume
	}
	ids, cs := farmtest.Issue(t, n1, 3)
	pid, p, q, rid, r := ids[0], cs[0], cs[1], ids[2], cs[2]
	pkey, rkey := "s:"+hex.EncodeToString(pid[:]), "s:"+hex.EncodeToString(rid[:])
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	primary := func(key string) ([]byte, error) {
		rctx, rcancel := context.WithTimeout(transport.PrimaryRead(ctx), time.Second)
		defer rcancel()
		return n1.Store.GetRecord(rctx, key)
	}
	var whole []byte
	farmtest.Eventually(t, 10*time.Second, "P and Q in the store", func() bool {
		var err error
		whole, err = primary(pkey)
		_, qerr := primary("s:" + hex.EncodeToString(ids[1][:]))
		_, rerr := primary(rkey)
		return err == nil && qerr == nil && rerr == nil
	})

	cut()
	if !dial(n1, p) {
		t.Fatal("n1 did not resume P")
	}
	resumed := time.Now()
	farmtest.Eventually(t, 10*time.Second, "P cut on its master", func() bool {
		v, err := primary(pkey)
		return (err == nil && !bytes.Equal(v, whole)) || errors.Is(err, transport.ErrNotFound)
	})
	if ok, err := n1.Node.Consume(ctx, rid); err != nil || !ok {
		t.Fatalf("Consume(R) on n1 = %v, %v", ok, err)
	}
	// The premise: a plain read of P is answered by its replica, whole,
	// and one of R finds it.
	if v, err := n2.Store.GetRecord(ctx, pkey); err != nil || !bytes.Equal(v, whole) {
		t.Fatalf("plain GetRecord of P on n2 = %d bytes, %v; want P whole, from its replica", len(v), err)
	}
	if _, err := n2.Store.GetRecord(ctx, rkey); err != nil {
		t.Fatalf("plain GetRecord of R on n2: %v; want R, from its replica", err)
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
	if dial(n2, p) {
		t.Errorf("n2 resumed P %v past its grace cut on n1: its lookup read a replica cut off from its master",
			time.Since(resumed.Add(grace)).Round(time.Millisecond))
	}
	if dial(n2, r) {
		t.Error("n2 resumed R, consumed on n1: its lookup read a replica cut off from its master")
	}
	if g := gated() - gatedBefore; g != 0 {
		t.Errorf("n2 gated %d hits: its delivery lagged, and the gate (not the lookup) decided", g)
	}
	if lookups() == lookupsBefore {
		t.Error("n2 did not look P up in the store")
	}
	if !dial(n2, q) {
		t.Error("n2 did not resume Q, which no one resumed")
	}
}
