package session_test

import (
	"crypto/tls"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestInsertChainStartBounded: a record inserted with a ChainStart in the
// future, or one so far in the past that its Unix nanoseconds wrap around,
// does not outlive MaxChainLifetime counted from the insert at the latest,
// and neither do the sessions that resuming it issues.
func TestInsertChainStartBounded(t *testing.T) {
	t.Parallel()
	const maxChain = time.Second
	for _, tc := range []struct {
		name  string
		start func(now time.Time) time.Time
	}{
		{"future", func(now time.Time) time.Time { return now.Add(24 * time.Hour) }},
		// Unix nanoseconds of the year 1000 wrap around to the 22nd century.
		{"year1000", func(time.Time) time.Time { return time.Date(1000, 1, 1, 0, 0, 0, 0, time.UTC) }},
	} {
		for _, tv := range versions {
			t.Run(tc.name+"/"+tv.name, func(t *testing.T) {
				t.Parallel()
				s := newServer(t, &session.Config{MaxChainLifetime: maxChain})
				var mu sync.Mutex
				var ids []session.ID
				s.cache.AddHook(session.EventNew, func(ev session.Event) {
					mu.Lock()
					ids = append(ids, ev.ID)
					mu.Unlock()
				})
				ccfg := s.client(tv.v, "localhost", tls.NewLRUClientSessionCache(8))
				if tlstest.MustDial(t, s.srv.Addr, ccfg).DidResume {
					t.Fatal("first connection resumed")
				}
				mu.Lock()
				id := ids[0]
				mu.Unlock()
				r, ok := lookup(s.cache, id)
				if !ok {
					t.Fatal("the session is not cached")
				}
				inserted := time.Now()
				r.ChainStart = tc.start(inserted)
				r.Expires = inserted.Add(time.Hour)
				if err := s.cache.Insert(id, r, session.OriginAPI); err != nil {
					t.Logf("Insert refused the record: %v", err)
				} else if got, _ := lookup(s.cache, id); got.Expires.After(inserted.Add(maxChain + time.Second)) {
					t.Errorf("inserted with ChainStart %v, the session expires at %v, past the insert plus MaxChainLifetime", r.ChainStart, got.Expires)
				}
				// Resumed within the chain's life: the successor inherits
				// the chain's start.
				tlstest.MustDial(t, s.srv.Addr, ccfg)
				time.Sleep(time.Until(inserted.Add(maxChain + 200*time.Millisecond)))
				if tlstest.MustDial(t, s.srv.Addr, ccfg).DidResume {
					t.Fatalf("resumed past the insert plus MaxChainLifetime (ChainStart %v)", r.ChainStart)
				}
			})
		}
	}
}
