package session

import (
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// TestReplacedLocalChildRetiredAsOwn: a parent resumed on two servers at
// once gets a child on each. Where this server's own child loses to a newer
// one from a peer, it is retired as this server's (OriginHandshake), so the
// farm retires it everywhere and in the store; a stale child from a peer
// that loses is retired with the peer's origin (its issuer retires it).
func TestReplacedLocalChildRetiredAsOwn(t *testing.T) {
	for _, tc := range []struct {
		name       string
		localFirst bool // this server's child is the older one
		want       Origin
	}{
		{"own child replaced by a newer peer child", true, OriginHandshake},
		{"stale peer child after a newer own child", false, OriginPeer},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(&Config{})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var mu sync.Mutex
			retired := map[ID]Origin{}
			c.AddHook(EventRemove, func(ev Event) {
				if ev.Reason == Retired {
					mu.Lock()
					retired[ev.ID] = ev.Origin
					mu.Unlock()
				}
			})
			parent, own, peer := c.NewID(), c.NewID(), c.NewID()
			now := time.Now()
			ownExp, peerExp := now.Add(time.Hour), now.Add(2*time.Hour)
			if !tc.localFirst {
				ownExp, peerExp = peerExp, ownExp
			}
			// This server's child, as a handshake issues it.
			if err := c.Insert(own, Record{State: []byte{1}, Expires: ownExp}, OriginAPI); err != nil {
				t.Fatal(err)
			}
			c.linkChild(parent, own, ownExp.UnixNano(), now.Add(time.Minute).UnixNano(), OriginHandshake)
			// The peer's child of the same parent arrives.
			if err := c.Insert(peer, Record{State: []byte{2}, Expires: peerExp, Parent: parent}, OriginPeer); err != nil {
				t.Fatal(err)
			}
			loser := own
			if !tc.localFirst {
				loser = peer
			}
			mu.Lock()
			defer mu.Unlock()
			got, ok := retired[loser]
			if !ok || len(retired) != 1 {
				t.Fatalf("retired %v, want only the loser", retired)
			}
			if got != tc.want {
				t.Errorf("loser retired with origin %v, want %v", got, tc.want)
			}
		})
	}
}

// TestBookkeepingSweptWithoutSessionSweep: with the sweep of sessions off
// (a negative SweepInterval), the links from resumed parents to their
// children and lapsed revocations are still forgotten once they can no
// longer matter, rather than kept for as long as the cache lives.
func TestBookkeepingSweptWithoutSessionSweep(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, err := New(&Config{SweepInterval: -1, ResumeGrace: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		const n = 100
		for i := range n {
			parent, child := c.NewID(), c.NewID()
			if err := c.Insert(parent, Record{State: []byte{1}, Expires: time.Now().Add(time.Hour)}, OriginAPI); err != nil {
				t.Fatal(err)
			}
			if err := c.Insert(child, Record{State: []byte{2}, Expires: time.Now().Add(time.Hour), Parent: parent}, OriginPeer); err != nil {
				t.Fatal(err)
			}
			c.RemoveChain(uint64(i+1), time.Now().Add(time.Second), OriginAPI)
		}
		time.Sleep(10 * time.Minute)
		synctest.Wait()
		c.life.mu.Lock()
		kids := len(c.life.kids)
		c.life.mu.Unlock()
		if kids != 0 {
			t.Errorf("%d links from parents whose grace ended 10 minutes ago are still kept", kids)
		}
		if tombs := c.tomb.n.Load(); tombs != 0 {
			t.Errorf("%d revocations that lapsed 10 minutes ago are still kept", tombs)
		}
		if got := c.size.Load(); got != 2*n {
			t.Errorf("%d sessions cached, want %d: the sweep of sessions is off", got, 2*n)
		}
	})
}

// TestFullLinksForgetEndedFirst: when the cache holds as many child links
// as its Capacity, the links whose parent's grace has ended are forgotten
// before a live one. The sweep that removes them runs every SweepInterval
// (a minute by default) while a link lasts the grace (30 s), so a busy
// cache finds its links full of ended ones; before, it forgot an arbitrary
// link, often a live one, and that parent, resumed again, kept two
// children.
func TestFullLinksForgetEndedFirst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const capacity = 16
		c, err := New(&Config{SweepInterval: -1, ResumeGrace: time.Second, Capacity: capacity, Buckets: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		link := func() ID {
			parent, child := c.NewID(), c.NewID()
			if err := c.Insert(parent, Record{State: []byte{1}, Expires: time.Now().Add(time.Hour)}, OriginAPI); err != nil {
				t.Fatal(err)
			}
			if err := c.Insert(child, Record{State: []byte{2}, Expires: time.Now().Add(time.Hour), Parent: parent}, OriginPeer); err != nil {
				t.Fatal(err)
			}
			return parent
		}
		for range capacity {
			link()
		}
		time.Sleep(2 * time.Second) // every grace so far has ended
		var live []ID
		for range capacity {
			live = append(live, link())
		}
		c.life.mu.Lock()
		defer c.life.mu.Unlock()
		for i, p := range live {
			if _, ok := c.life.kids[p]; !ok {
				t.Errorf("the link of live parent %d of %d was forgotten while ended ones were kept", i+1, capacity)
			}
		}
		if n := len(c.life.kids); n > capacity {
			t.Errorf("%d links kept, more than the Capacity %d", n, capacity)
		}
	})
}

// BenchmarkLinkChildFull measures linking a child when the cache already
// holds Capacity links (102,400, the default): full of links whose grace
// has ended (ended: a busy cache between sweeps), or of live ones (live:
// more resumptions in a grace than the cache holds sessions), where it
// looks at up to linkScan links before it forgets an arbitrary one.
func BenchmarkLinkChildFull(b *testing.B) {
	for _, ended := range []bool{true, false} {
		name := "links=live"
		if ended {
			name = "links=ended"
		}
		b.Run(name, func(b *testing.B) {
			c, err := New(&Config{SweepInterval: -1})
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			now := c.nowNano()
			until := now + int64(time.Hour)
			if ended {
				until = now - 1
			}
			for range c.cfg.Capacity {
				c.linkChild(c.NewID(), c.NewID(), until, until, OriginPeer)
			}
			ids := make([][2]ID, b.N)
			for i := range ids {
				ids[i] = [2]ID{c.NewID(), c.NewID()}
			}
			b.ResetTimer()
			for i := range b.N {
				// Each new link ends as those it replaces, so the map
				// stays as it began.
				c.linkChild(ids[i][0], ids[i][1], until, until, OriginPeer)
			}
		})
	}
}
