package session_test

import (
	"crypto/tls"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// offerCache is a client session cache that offers one given session and
// keeps the first new one it is given: a client that resumes one session
// of a chain, and holds its successor for another.
type offerCache struct {
	mu         sync.Mutex
	offer, got *tls.ClientSessionState
}

func (o *offerCache) Get(string) (*tls.ClientSessionState, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.offer, o.offer != nil
}

func (o *offerCache) Put(_ string, cs *tls.ClientSessionState) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.got == nil && cs != nil {
		o.got = cs
	}
}

// chainOfSessions makes a resumption chain of n TLS 1.3 sessions on s, each
// resumed once from its predecessor (which stays resumable in its grace),
// and returns their IDs and a client configuration that offers each.
func chainOfSessions(t *testing.T, s *farmServer, n int) ([]session.ID, []*tls.Config) {
	t.Helper()
	var rec recorder
	remove := s.cache.AddHook(session.EventNew, rec.hook)
	defer remove()
	var ids []session.ID
	var clients []*tls.Config
	var prev *tls.ClientSessionState
	for i := range n {
		oc := &offerCache{offer: prev}
		cs := tlstest.MustDial(t, s.srv.Addr, s.client(tls.VersionTLS13, "localhost", oc))
		if cs.DidResume != (i > 0) {
			t.Fatalf("handshake %d: resumed = %t", i, cs.DidResume)
		}
		evs := rec.take()
		if len(evs) != 1 || oc.got == nil {
			t.Fatalf("handshake %d: %d new sessions, client got one: %t", i, len(evs), oc.got != nil)
		}
		ids = append(ids, evs[0].ID)
		clients = append(clients, s.client(tls.VersionTLS13, "localhost", &offerCache{offer: oc.got}))
		prev = oc.got
	}
	return ids, clients
}

// TestNoLookupWhileChainRevoked revokes a chain while its sessions are
// cached in different buckets, and from the first removal's event (the
// scan has reached one bucket, not yet the others) resumes, gets and
// removes the chain's other sessions: none is found, though the scan has
// not yet reached them. Each is removed once.
func TestNoLookupWhileChainRevoked(t *testing.T) {
	const n = 8
	for _, how := range []string{"RemoveChain", "RemoveChains", "Remove"} {
		t.Run(how, func(t *testing.T) {
			s := newServer(t, &session.Config{Buckets: 1024})
			ids, clients := chainOfSessions(t, s, n)
			rec, ok := lookup(s.cache, ids[n-1])
			if !ok {
				t.Fatal("the newest session is not cached")
			}
			var mu sync.Mutex
			removed := map[session.ID]int{}
			var resumed, found []int
			probed := false
			s.cache.AddHook(session.EventRemove, func(ev session.Event) {
				mu.Lock()
				removed[ev.ID]++
				first := !probed
				probed = true
				mu.Unlock()
				if !first {
					return
				}
				for i, id := range ids {
					mu.Lock()
					gone := removed[id] > 0
					mu.Unlock()
					if gone {
						continue
					}
					if _, ok := s.cache.GetBuffer(id, nil); ok {
						found = append(found, i)
					}
					if _, ok := s.cache.Get(id); ok {
						found = append(found, i)
					}
					cs, err := tlstest.Dial(s.srv.Addr, clients[i])
					if err != nil {
						t.Errorf("handshake offering session %d: %v", i, err)
					} else if cs.DidResume {
						resumed = append(resumed, i)
					}
				}
			})
			var got int
			switch how {
			case "RemoveChain":
				got = s.cache.RemoveChain(rec.Chain, s.cache.ChainEnd(rec), session.OriginAPI)
			case "RemoveChains":
				got = s.cache.RemoveChains(func(yield func(uint64, time.Time) bool) {
					yield(rec.Chain, s.cache.ChainEnd(rec))
				}, session.OriginAPI)
			case "Remove":
				if _, ok := s.cache.Remove(ids[n-1]); !ok {
					t.Fatal("Remove did not find the session")
				}
				got = n
			}
			if !probed {
				t.Fatal("no session was removed")
			}
			if len(resumed) > 0 || len(found) > 0 {
				t.Errorf("while the revocation's scan ran, sessions %v of the revoked chain resumed, %v were found by Get/GetBuffer", resumed, found)
			}
			if got != n || len(removed) != n {
				t.Errorf("removed %d sessions (%d distinct), want %d", got, len(removed), n)
			}
			for i, id := range ids {
				if removed[id] != 1 {
					t.Errorf("session %d: %d remove events, want 1", i, removed[id])
				}
			}
		})
	}
}

// TestRevokeAgainWhileRevoking revokes a chain again (by chain, in a batch,
// and by the ID of one of its sessions) from within the first revocation's
// (by chain, or in a batch) first EventRemove, before its scan has reached
// the other buckets: when the second revocation returns, no session of the
// chain is cached, and each was removed, with one event, by one of the two.
func TestRevokeAgainWhileRevoking(t *testing.T) {
	const n = 8
	for _, how := range []string{"RemoveChain", "RemoveChains", "Remove", "RemoveChain after RemoveChains"} {
		t.Run(how, func(t *testing.T) {
			s := newServer(t, &session.Config{Buckets: 1024})
			ids, _ := chainOfSessions(t, s, n)
			rec, ok := lookup(s.cache, ids[n-1])
			if !ok {
				t.Fatal("the newest session is not cached")
			}
			var mu sync.Mutex
			removed := map[session.ID]int{}
			left := -1 // sessions cached after the second revocation
			second, probed := 0, false
			s.cache.AddHook(session.EventRemove, func(ev session.Event) {
				mu.Lock()
				removed[ev.ID]++
				first := !probed
				probed = true
				mu.Unlock()
				if !first {
					return
				}
				switch how {
				case "RemoveChain", "RemoveChain after RemoveChains":
					second = s.cache.RemoveChain(rec.Chain, s.cache.ChainEnd(rec), session.OriginPeer)
				case "RemoveChains":
					second = s.cache.RemoveChains(func(yield func(uint64, time.Time) bool) {
						yield(rec.Chain, s.cache.ChainEnd(rec))
					}, session.OriginPeer)
				case "Remove":
					// The ID of a session not yet removed (its bucket not
					// yet scanned), which Remove still finds.
					for _, got := range ids {
						mu.Lock()
						gone := removed[got] > 0
						mu.Unlock()
						if !gone {
							if _, ok := s.cache.Remove(got); !ok {
								t.Errorf("Remove did not find a session the cache holds")
							}
							break
						}
					}
				}
				// Snapshot and Expiries leave out a chain under
				// revocation (as lookups do), so count what is held.
				left = int(stats(s.cache).Size)
			})
			var first int
			if how == "RemoveChain after RemoveChains" {
				// Another chain too, as a batch holds many.
				first = s.cache.RemoveChains(func(yield func(uint64, time.Time) bool) {
					_ = yield(rec.Chain+1, s.cache.ChainEnd(rec)) && yield(rec.Chain, s.cache.ChainEnd(rec))
				}, session.OriginAPI)
			} else {
				first = s.cache.RemoveChain(rec.Chain, s.cache.ChainEnd(rec), session.OriginAPI)
			}
			if !probed {
				t.Fatal("no session was removed")
			}
			if left != 0 {
				t.Errorf("after the second revocation returned, %d sessions of the chain were still cached", left)
			}
			if how != "Remove" && first+second != n {
				t.Errorf("the revocations removed %d + %d sessions, want %d in all", first, second, n)
			}
			for i, id := range ids {
				if removed[id] != 1 {
					t.Errorf("session %d: %d remove events, want 1", i, removed[id])
				}
			}
			if st := stats(s.cache); st.Size != 0 || st.Removed != n {
				t.Errorf("cache holds %d sessions, %d removed as revoked; want 0, %d", st.Size, st.Removed, n)
			}
		})
	}
}

// TestNoExportWhileChainRevoked revokes a chain while its sessions are
// cached in different buckets, and from the first removal's event (the
// scan has reached one bucket, not yet the others) asks for what a farm
// exports to its store and its peers: Snapshot (the write-back), Expiries
// (the reconcile) and Cut (a cut or a released claim written to the
// store). None yields or cuts a session of the chain, though the scan has
// not removed them yet; a session of another chain still is.
func TestNoExportWhileChainRevoked(t *testing.T) {
	const n = 8
	for _, how := range []string{"RemoveChain", "RemoveChains"} {
		t.Run(how, func(t *testing.T) {
			s := newServer(t, &session.Config{Buckets: 1024})
			ids, _ := chainOfSessions(t, s, n)
			other, _ := chainOfSessions(t, s, 1)
			rec, ok := lookup(s.cache, ids[n-1])
			if !ok {
				t.Fatal("the newest session is not cached")
			}
			inChain := map[session.ID]bool{}
			for _, id := range ids {
				inChain[id] = true
			}
			var mu sync.Mutex
			probed := false
			var exported []string
			otherSeen := 0
			s.cache.AddHook(session.EventRemove, func(ev session.Event) {
				mu.Lock()
				first := !probed
				probed = true
				mu.Unlock()
				if !first {
					return
				}
				for id := range s.cache.Snapshot(-1) {
					if inChain[id] {
						exported = append(exported, "Snapshot")
					} else if id == other[0] {
						otherSeen++
					}
				}
				for id := range s.cache.Expiries() {
					if inChain[id] {
						exported = append(exported, "Expiries")
					} else if id == other[0] {
						otherSeen++
					}
				}
				for _, id := range ids {
					if id == ev.ID {
						continue
					}
					if _, ok := s.cache.Cut(id, time.Now().Add(time.Hour)); ok {
						exported = append(exported, "Cut")
					}
				}
				if _, ok := s.cache.Cut(other[0], time.Now().Add(time.Hour)); ok {
					otherSeen++
				}
			})
			switch how {
			case "RemoveChain":
				s.cache.RemoveChain(rec.Chain, s.cache.ChainEnd(rec), session.OriginPeer)
			case "RemoveChains":
				s.cache.RemoveChains(func(yield func(uint64, time.Time) bool) {
					_ = yield(rec.Chain+1, s.cache.ChainEnd(rec)) && yield(rec.Chain, s.cache.ChainEnd(rec))
				}, session.OriginPeer)
			}
			if !probed {
				t.Fatal("no session was removed")
			}
			if len(exported) > 0 {
				t.Errorf("while the revocation's scan ran, sessions of the revoked chain were exported: %v", exported)
			}
			if otherSeen != 3 {
				t.Errorf("a session of another chain was exported %d times of 3 (Snapshot, Expiries, Cut)", otherSeen)
			}
		})
	}
}
