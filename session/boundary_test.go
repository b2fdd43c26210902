package session_test

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestLifetimeEndsAlike: a session stops resuming at the instant its
// Lifetime (or its chain's MaxChainLifetime) ends, whether the cache holds
// it or a stateless ticket carries it. A cached session's expiry is the
// first instant it is refused; a stateless ticket was still taken at that
// instant, and refused only a nanosecond later.
func TestLifetimeEndsAlike(t *testing.T) {
	t.Parallel()
	for _, mode := range []session.Mode{session.Stateful, session.Stateless} {
		for _, tv := range versions {
			t.Run(mode.String()+"/"+tv.name, func(t *testing.T) {
				clk := newClock()
				s := modeServer(t, mode, session.Config{Now: clk.Now, Lifetime: time.Hour, MaxChainLifetime: 90 * time.Minute}, nil)
				frozen := &tlstest.FrozenCache{}
				tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", frozen))
				clk.Advance(time.Hour - time.Nanosecond)
				if !tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", frozen)).DidResume {
					t.Fatal("did not resume a nanosecond before the end of its Lifetime")
				}
				frozen = &tlstest.FrozenCache{}
				tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", frozen))
				clk.Advance(time.Hour)
				if tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", frozen)).DidResume {
					t.Fatalf("%v: resumed at the instant its Lifetime ended", mode)
				}

				// A chain: resumed 59 minutes in, its successor is taken a
				// nanosecond before the chain's 90 minutes end, not at
				// the instant they end.
				for _, end := range []time.Duration{time.Nanosecond, 0} {
					lru := tls.NewLRUClientSessionCache(1)
					tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", lru))
					clk.Advance(59 * time.Minute)
					if !tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", lru)).DidResume {
						t.Fatal("did not resume within the Lifetime")
					}
					clk.Advance(31*time.Minute - end)
					if got := tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", lru)).DidResume; got != (end > 0) {
						t.Fatalf("%v: resumed %v before the chain's end: %t, want %t", mode, end, got, end > 0)
					}
				}
			})
		}
	}
}
