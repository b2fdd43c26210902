package session

import (
	"sync"
	"testing"
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
