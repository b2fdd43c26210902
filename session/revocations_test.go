package session_test

import (
	"maps"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// TestRevocations: the revoked chains a cache remembers — from Remove and
// from RemoveChain — come back from Revocations with when each lapses (the
// later of two revocations of one chain, and no later than the cache's
// MaxChainLifetime allows), and a lapsed one does not.
func TestRevocations(t *testing.T) {
	clk := newClock()
	c := newCache(t, &session.Config{Now: clk.Now, SweepInterval: -1, MaxChainLifetime: time.Hour})
	now := clk.Now()
	if n := len(maps.Collect(c.Revocations())); n != 0 {
		t.Fatalf("a new cache remembers %d revocations", n)
	}
	id := c.NewID()
	if err := c.Insert(id, session.Record{State: []byte("s"), ServerName: "a.example", Expires: now.Add(time.Minute), Chain: 7, ChainStart: now.Add(-10 * time.Minute)}, session.OriginAPI); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Remove(id); !ok {
		t.Fatal("Remove did not find the session")
	}
	c.RemoveChain(8, now.Add(time.Minute), session.OriginPeer)
	c.RemoveChain(8, now.Add(2*time.Minute), session.OriginPeer)
	c.RemoveChain(9, now.Add(5*time.Hour), session.OriginPeer)
	c.RemoveChain(10, now.Add(-time.Second), session.OriginPeer) // lapsed already
	want := map[uint64]time.Time{
		7: now.Add(50 * time.Minute), // its chain's end
		8: now.Add(2 * time.Minute),
		9: now.Add(time.Hour), // bounded by MaxChainLifetime
	}
	got := maps.Collect(c.Revocations())
	if len(got) != len(want) {
		t.Fatalf("Revocations = %v, want %v", got, want)
	}
	for chain, until := range want {
		if !got[chain].Equal(until) {
			t.Errorf("chain %d revoked until %v, want %v", chain, got[chain], until)
		}
	}
	clk.Advance(3 * time.Minute)
	got = maps.Collect(c.Revocations())
	if _, ok := got[8]; ok || len(got) != 2 {
		t.Fatalf("Revocations after chain 8's lapsed = %v, want chains 7 and 9", got)
	}
}
