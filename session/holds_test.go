package session_test

import (
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// TestHolds: Holds reports a session held as inserting the record would
// leave it, and nothing else: not another state, chain, server name or
// chain start, not a record that would cut it, not one whose parent the
// insert would cut or link, not a revoked chain, not a lapsed session.
func TestHolds(t *testing.T) {
	clk := newClock()
	c, err := session.New(&session.Config{Now: clk.Now, ResumeGrace: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	now := clk.Now()
	parent := c.NewID()
	if err := c.Insert(parent, session.Record{State: []byte("p"), ServerName: "a.example", Expires: now.Add(time.Hour), Chain: 9, ChainStart: now}, session.OriginPeer); err != nil {
		t.Fatal(err)
	}
	id := c.NewID()
	rec := session.Record{State: []byte("s"), ServerName: "a.example", Expires: now.Add(time.Hour), Chain: 9, ChainStart: now, Parent: parent}
	if c.Holds(id, rec) {
		t.Fatal("Holds before the insert")
	}
	if err := c.Insert(id, rec, session.OriginLoader); err != nil {
		t.Fatal(err)
	}
	if !c.Holds(id, rec) {
		t.Fatal("Holds false for the record just inserted")
	}
	later := rec
	later.Expires = now.Add(2 * time.Hour) // the insert keeps the earlier end
	upper := rec
	upper.ServerName = "A.Example" // taken in lower case
	for name, r := range map[string]session.Record{"later end": later, "name's case": upper} {
		if !c.Holds(id, r) {
			t.Errorf("%s: Holds false", name)
		}
	}
	other := func(f func(*session.Record)) session.Record { r := rec; f(&r); return r }
	for name, r := range map[string]session.Record{
		"another state":       other(func(r *session.Record) { r.State = []byte("t") }),
		"another chain":       other(func(r *session.Record) { r.Chain = 8 }),
		"another server name": other(func(r *session.Record) { r.ServerName = "b.example" }),
		"another chain start": other(func(r *session.Record) { r.ChainStart = now.Add(-time.Minute) }),
		"an earlier end":      other(func(r *session.Record) { r.Expires = now.Add(time.Minute) }),
		"another parent":      other(func(r *session.Record) { r.Parent = c.NewID() }),
		"itself as parent":    other(func(r *session.Record) { r.Parent = id }),
	} {
		if c.Holds(id, r) {
			t.Errorf("%s: Holds true", name)
		}
	}
	// The parent whole again (the insert would cut it).
	if err := c.Insert(parent, session.Record{State: []byte("q"), ServerName: "a.example", Expires: now.Add(time.Hour), Chain: 9, ChainStart: now}, session.OriginPeer); err != nil {
		t.Fatal(err)
	}
	if c.Holds(id, rec) {
		t.Error("Holds true while the insert would cut the parent")
	}
	c.Cut(parent, now.Add(5*time.Second)) // within the grace from the child's issue
	if !c.Holds(id, rec) {
		t.Error("Holds false once the parent is cut again")
	}
	// Without a parent; then revoked, and lapsed.
	id2 := c.NewID()
	rec2 := session.Record{State: []byte("u"), ServerName: "a.example", Expires: now.Add(time.Minute), Chain: 10, ChainStart: now}
	if err := c.Insert(id2, rec2, session.OriginLoader); err != nil {
		t.Fatal(err)
	}
	if !c.Holds(id2, rec2) {
		t.Fatal("Holds false for a session without a parent")
	}
	clk.Advance(2 * time.Minute)
	if c.Holds(id2, rec2) {
		t.Error("Holds true for a lapsed session")
	}
	c.RemoveChain(9, now.Add(time.Hour), session.OriginPeer)
	if c.Holds(id, rec) {
		t.Error("Holds true for a revoked chain")
	}
}
