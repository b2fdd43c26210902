package farm

import (
	"context"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// TestRecutWrittenReadMark: recutWritten skips reading the sessions of a
// written batch again only if nothing could have changed what
// refreshLater read of them (see readMark). Whatever happens between that
// read and the write's remembering — a session cut (by a peer's cut or its child's insert), one resumed and gone,
// one heard resumed while the cache no longer held it, one replaced, a
// chain being revoked, a retirement heard — the store gets its cut or
// deletion again, as when every session was read again; with nothing in
// between, nothing.
func TestRecutWrittenReadMark(t *testing.T) {
	const grace = 10 * time.Second
	cases := []struct {
		name string
		do   func(t *testing.T, n *Node, id session.ID, rec session.Record)
		want itemOp // opNew: nothing written again
	}{
		{"nothing", func(*testing.T, *Node, session.ID, session.Record) {}, opNew},
		{"cut", func(t *testing.T, n *Node, id session.ID, _ session.Record) {
			n.cfg.Cache.Cut(id, n.cfg.Now().Add(grace))
		}, opCut},
		{"cut to the past and gone", func(t *testing.T, n *Node, id session.ID, _ session.Record) {
			n.noteResumed(id, n.cfg.Now().Add(time.Second), n.cfg.Now())
			n.cfg.Cache.Cut(id, n.cfg.Now().Add(-time.Second))
			n.cfg.Cache.Retire(id, session.OriginPeer)
		}, opRetire},
		{"resumed while not held", func(t *testing.T, n *Node, id session.ID, _ session.Record) {
			// Gone before refreshLater's read (see below), then
			// heard resumed: the write put it back whole.
			n.noteResumed(id, n.cfg.Now().Add(time.Second), n.cfg.Now())
		}, opRetire},
		{"its child inserted", func(t *testing.T, n *Node, id session.ID, rec session.Record) {
			rec.Parent = id
			if err := n.cfg.Cache.Insert(n.cfg.Cache.NewID(), rec, session.OriginPeer); err != nil {
				t.Fatal(err)
			}
		}, opCut},
		{"replaced", func(t *testing.T, n *Node, id session.ID, rec session.Record) {
			rec.State = []byte("another")
			rec.Expires = n.cfg.Now().Add(grace)
			if err := n.cfg.Cache.Insert(id, rec, session.OriginPeer); err != nil {
				t.Fatal(err)
			}
		}, opCut},
		{"retired", func(t *testing.T, n *Node, id session.ID, _ session.Record) {
			n.retired.add(id, n.cfg.Now())
		}, opRetire},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n, cache, id, rec := readMarkNode(t, grace)
			if c.name == "resumed while not held" {
				cache.Retire(id, session.OriginPeer)
			}
			batch := []item{{id: id, rec: rec}}
			read := n.readMark()
			n.refreshLater(batch)
			if batch[0].op != opNew {
				t.Fatalf("refreshLater left the session out (op %d)", batch[0].op)
			}
			// Here the write goes out.
			c.do(t, n, id, rec)
			n.recutWritten(batch, true, read)
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			got, _ := n.sq.pop(ctx, nil, 16)
			switch {
			case c.want == opNew && len(got) != 0:
				t.Errorf("written again: %+v", got)
			case c.want != opNew && (len(got) != 1 || got[0].id != id || got[0].op != c.want):
				t.Errorf("written again: %+v, want one op %d of the session", got, c.want)
			}
		})
	}
	t.Run("revoked", func(t *testing.T) {
		// A chain whose revocation has begun: Cut finds none of it, and
		// a session resumed lately goes from the store again.
		n, cache, id, rec := readMarkNode(t, grace)
		n.noteResumed(id, time.Now().Add(time.Second), time.Now())
		batch := []item{{id: id, rec: rec}}
		read := n.readMark()
		n.refreshLater(batch)
		cache.RemoveChain(7, time.Now().Add(time.Hour), session.OriginPeer)
		n.recutWritten(batch, true, read)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if got, _ := n.sq.pop(ctx, nil, 16); len(got) != 1 || got[0].op != opRetire {
			t.Errorf("written again: %+v, want the session's deletion", got)
		}
	})
}

// readMarkNode returns a node of TestRecutWrittenReadMark, with the cache
// it stands on (resume grace grace), holding one session of chain 7 as a
// handshake inserted it.
func readMarkNode(t *testing.T, grace time.Duration) (*Node, *session.Cache, session.ID, session.Record) {
	t.Helper()
	cache, err := session.New(&session.Config{SweepInterval: -1, ResumeGrace: grace})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cache.Close() })
	n := &Node{cfg: Config{Cache: cache, Mode: Broadcast, Now: time.Now, MaxSkew: 100 * time.Millisecond}, sq: newQueue(16)}
	n.retired = newIDMemory(maxRetired, time.Minute)
	n.resumed = newEndMemory(maxResumed, time.Minute)
	n.written = newWritten(time.Minute)
	id := cache.NewID()
	rec := session.Record{State: []byte("state"), ServerName: "localhost", Expires: time.Now().Add(time.Hour), Chain: 7, ChainStart: time.Now()}
	if err := cache.Insert(id, rec, session.OriginHandshake); err != nil {
		t.Fatal(err)
	}
	return n, cache, id, rec
}
