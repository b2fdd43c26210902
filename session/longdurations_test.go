package session_test

import (
	"crypto/tls"
	"math"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestLongDurations: a Config duration as long as a time.Duration holds
// (math.MaxInt64, the usual "no bound") means no bound, in every mode. Added
// to now in Unix nanoseconds it wrapped around to a time before 1970, and
// every session expired as it was stored: nothing resumed.
func TestLongDurations(t *testing.T) {
	t.Parallel()
	forever := time.Duration(math.MaxInt64)
	for _, cfg := range []struct {
		name string
		cc   session.Config
	}{
		{"Lifetime", session.Config{Lifetime: forever}},
		{"MaxChainLifetime", session.Config{MaxChainLifetime: forever}},
		{"ResumeGrace", session.Config{ResumeGrace: forever}},
		{"MaxClockSkew", session.Config{MaxClockSkew: forever}},
	} {
		for _, mode := range []session.Mode{session.Stateful, session.Stateless} {
			for _, tv := range versions {
				t.Run(cfg.name+"/"+mode.String()+"/"+tv.name, func(t *testing.T) {
					s := modeServer(t, mode, cfg.cc, nil)
					lru := tls.NewLRUClientSessionCache(1)
					tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", lru))
					for i := range 3 {
						if !tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", lru)).DidResume {
							t.Fatalf("resumption %d failed (%+v)", i+1, stats(s.cache))
						}
					}
					// The first ticket, resumed once, resumes again within
					// its grace.
					frozen := &tlstest.FrozenCache{}
					for i := range 3 {
						if got := tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", frozen)).DidResume; got != (i > 0) {
							t.Fatalf("connection %d with one ticket: resumed %t, want %t", i+1, got, i > 0)
						}
					}
					id := s.cache.NewID()
					if err := s.cache.Insert(id, record(8, 1, time.Hour), session.OriginAPI); err != nil {
						t.Fatalf("Insert: %v", err)
					}
					if _, ok := s.cache.GetBuffer(id, nil); !ok {
						t.Fatal("GetBuffer: an inserted session is not there")
					}
				})
			}
		}
	}
}

// TestLongTicketFallback: a fallback ticket lifetime as long as a
// time.Duration holds means a ticket that resumes (within Lifetime), not
// one that expired before 1970.
func TestLongTicketFallback(t *testing.T) {
	t.Parallel()
	for _, tv := range versions {
		t.Run(tv.name, func(t *testing.T) {
			a := modeServer(t, session.Stateful, session.Config{}, nil)
			b := modeServer(t, session.Stateful, session.Config{}, nil)
			b.cache.SetTicketFallback(0)
			if !a.cache.SetTicketFallback(time.Duration(math.MaxInt64)) {
				t.Fatal("the fallback was not turned on")
			}
			frozen := &tlstest.FrozenCache{}
			tlstest.MustDial(t, a.srv.Addr, a.client(tv.v, "localhost", frozen))
			if !tlstest.MustDial(t, b.srv.Addr, b.client(tv.v, "localhost", frozen)).DidResume {
				t.Fatalf("a fallback ticket did not resume (%+v)", stats(b.cache))
			}
		})
	}
}
