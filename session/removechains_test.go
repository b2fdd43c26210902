package session_test

import (
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// A chainRev is one chain to revoke, until now plus in.
type chainRev struct {
	chain uint64
	in    time.Duration
}

// revokedState is what a test compares of a cache after revocations: its
// sessions, the revocations it remembers, the EventRemove events fired and
// the count of sessions removed as revoked.
type revokedState struct {
	sessions map[session.ID]string
	revs     map[uint64]time.Time
	events   []string
	removed  uint64
}

// revocationCache returns a cache on a clock set at t0, with sessions of
// chains 1 to 6 (chain c has c sessions) already holding:
// chain 5 revoked for an hour (its sessions gone), chain 6 revoked for a
// minute that has lapsed, and a session of chain 6 inserted since, under
// the given IDs, which key authenticates. It also
// returns the clock and the EventRemove events fired from then on.
func revocationCache(t *testing.T, t0 time.Time, key session.IDKey, ids []session.ID) (*session.Cache, *clock, func() []string) {
	t.Helper()
	clk := &clock{t: t0}
	c := newCache(t, &session.Config{Now: clk.Now, SweepInterval: -1, MaxChainLifetime: 10 * time.Hour, Lifetime: 2 * time.Hour})
	if err := c.SetIDKeys(key); err != nil {
		t.Fatal(err)
	}
	insert := func(chain uint64, i int) {
		t.Helper()
		id := ids[0]
		ids = ids[1:]
		r := session.Record{State: fmt.Appendf(nil, "chain %d session %d", chain, i), ServerName: "a.example", Expires: clk.Now().Add(time.Hour), Chain: chain, ChainStart: clk.Now()}
		if err := c.Insert(id, r, session.OriginAPI); err != nil {
			t.Fatal(err)
		}
	}
	for chain := uint64(1); chain <= 6; chain++ {
		for i := range int(chain) {
			insert(chain, i)
		}
	}
	c.RemoveChain(5, clk.Now().Add(time.Hour), session.OriginPeer)
	c.RemoveChain(6, clk.Now().Add(time.Minute), session.OriginPeer)
	clk.Advance(2 * time.Minute)
	insert(6, 100)
	var mu sync.Mutex
	var events []string
	c.AddHook(session.EventRemove, func(ev session.Event) {
		mu.Lock()
		events = append(events, fmt.Sprintf("%x %v %v %v %s %d", ev.ID, ev.Kind, ev.Origin, ev.Reason, ev.Record.State, ev.Record.Chain))
		mu.Unlock()
	})
	return c, clk, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Sorted(slices.Values(events))
	}
}

func stateOf(c *session.Cache, events []string) revokedState {
	s := revokedState{sessions: map[session.ID]string{}, revs: maps.Collect(c.Revocations()), events: events, removed: stats(c).Removed}
	for id, r := range c.Snapshot(-1) {
		s.sessions[id] = fmt.Sprintf("%s %d %v %v", r.State, r.Chain, r.Expires.UnixNano(), r.ChainStart.UnixNano())
	}
	return s
}

// TestRemoveChainsAsRemoveChain: RemoveChains leaves a cache as a call of
// RemoveChain for each chain in turn does — the same sessions, the same
// revocations remembered, the same EventRemove events (Removed, with the
// origin given) and the same count returned — for chains with sessions and
// without, chains already revoked (which it does not revoke anew, but whose
// revocation a later time extends), a lapsed revocation, times already
// past (sessions removed, nothing remembered), times beyond
// MaxChainLifetime (remembered only that long) and a chain named twice.
func TestRemoveChainsAsRemoveChain(t *testing.T) {
	key := session.IDKey{ID: 3, Key: [32]byte{1, 2, 3}}
	tests := []struct {
		name string
		revs []chainRev
	}{
		{"none", nil},
		{"one", []chainRev{{1, time.Hour}}},
		{"several", []chainRev{{1, time.Hour}, {2, 30 * time.Minute}, {4, time.Minute}, {99, time.Hour}}},
		{"no sessions", []chainRev{{98, time.Hour}, {99, time.Hour}}},
		{"already revoked", []chainRev{{5, 2 * time.Hour}, {5, 10 * time.Minute}, {2, time.Hour}}},
		{"lapsed revocation", []chainRev{{6, time.Hour}}},
		{"time past", []chainRev{{3, -time.Second}, {4, 0}}},
		{"beyond MaxChainLifetime", []chainRev{{4, 100 * time.Hour}, {97, 11 * time.Hour}}},
		{"named twice", []chainRev{{1, 10 * time.Minute}, {1, time.Hour}, {1, -time.Second}, {2, -time.Second}, {2, time.Hour}, {3, time.Hour}, {3, 5 * time.Minute}}},
		{"all", []chainRev{{3, -time.Second}, {5, 3 * time.Hour}, {6, 20 * time.Hour}, {1, time.Hour}, {2, time.Minute}, {4, time.Hour}, {4, 0}, {99, time.Hour}}},
	}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	// The same IDs in both caches of a comparison.
	mint := newCache(t, &session.Config{Now: func() time.Time { return t0 }, SweepInterval: -1})
	if err := mint.SetIDKeys(key); err != nil {
		t.Fatal(err)
	}
	ids := make([]session.ID, 30)
	for i := range ids {
		ids[i] = mint.NewID()
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			loop, lclk, levents := revocationCache(t, t0, key, ids)
			batch, bclk, bevents := revocationCache(t, t0, key, ids)
			if want, got := stateOf(loop, nil), stateOf(batch, nil); !equalStates(want, got) {
				t.Fatalf("the two caches differ before the revocations:\n%v\n%v", want, got)
			}
			want := 0
			for _, r := range tt.revs {
				want += loop.RemoveChain(r.chain, lclk.Now().Add(r.in), session.OriginPeer)
			}
			now := bclk.Now()
			got := batch.RemoveChains(func(yield func(uint64, time.Time) bool) {
				for _, r := range tt.revs {
					if !yield(r.chain, now.Add(r.in)) {
						return
					}
				}
			}, session.OriginPeer)
			if got != want {
				t.Errorf("RemoveChains removed %d sessions, RemoveChain %d", got, want)
			}
			ws, gs := stateOf(loop, levents()), stateOf(batch, bevents())
			if !equalStates(ws, gs) {
				t.Errorf("after RemoveChains:\n%v\nafter RemoveChain:\n%v", gs, ws)
			}
			if len(ws.events) != want {
				t.Errorf("%d EventRemove events for %d sessions removed", len(ws.events), want)
			}
		})
	}
}

func equalStates(a, b revokedState) bool {
	return maps.Equal(a.sessions, b.sessions) &&
		maps.EqualFunc(a.revs, b.revs, time.Time.Equal) &&
		slices.Equal(a.events, b.events) && a.removed == b.removed
}

// TestRemoveChainsRacingInserts: sessions of the chains RemoveChains
// revokes, inserted while it runs, are either refused or removed: none is
// left once it has returned.
func TestRemoveChainsRacingInserts(t *testing.T) {
	const chains = 64
	for round := range 20 {
		c := newCache(t, &session.Config{SweepInterval: -1, Buckets: 1024})
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for g := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					r := session.Record{State: []byte("s"), Expires: time.Now().Add(time.Hour), Chain: uint64((i+g)%chains) + 1}
					c.Insert(c.NewID(), r, session.OriginPeer)
				}
			}()
		}
		time.Sleep(time.Millisecond)
		until := time.Now().Add(time.Hour)
		c.RemoveChains(func(yield func(uint64, time.Time) bool) {
			for chain := uint64(1); chain <= chains; chain++ {
				if !yield(chain, until) {
					return
				}
			}
		}, session.OriginAPI)
		close(stop)
		wg.Wait()
		for id, r := range c.Snapshot(-1) {
			t.Fatalf("round %d: session %x of revoked chain %d left", round, id[:4], r.Chain)
		}
	}
}
