package session_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// ahead returns a clock that runs lead ahead of the real one.
func ahead(lead time.Duration) func() time.Time {
	return func() time.Time { return time.Now().Add(lead) }
}

// TestStatelessTicketFromClockAhead: a stateless ticket's age counts from
// the issue time in its binding, by its issuer's clock. A ticket from a
// server whose clock runs an hour ahead is refused by a server with the
// real clock (a full handshake, counted as future), where it would
// otherwise live an hour past Lifetime; one from a server 2 s ahead,
// within MaxClockSkew, resumes. SetDefaultClockSkew (a farm's MaxSkew)
// widens the default bound but not one the Config set.
func TestStatelessTicketFromClockAhead(t *testing.T) {
	cases := []struct {
		name    string
		lead    time.Duration
		cfg     session.Config
		farm    time.Duration // passed to SetDefaultClockSkew, if > 0
		resumes bool
	}{
		{name: "1h ahead", lead: time.Hour},
		{name: "2s ahead", lead: 2 * time.Second, resumes: true},
		{name: "1h ahead, farm bound 2h", lead: time.Hour, farm: 2 * time.Hour, resumes: true},
		{name: "1h ahead, own bound 1m, farm bound 2h", lead: time.Hour, cfg: session.Config{MaxClockSkew: time.Minute}, farm: 2 * time.Hour},
	}
	for _, tv := range versions {
		for _, tc := range cases {
			t.Run(tv.name+"/"+tc.name, func(t *testing.T) {
				issuer := modeServer(t, session.Stateless, session.Config{Now: ahead(tc.lead)}, nil)
				s := modeServer(t, session.Stateless, tc.cfg, nil)
				want := tc.cfg.MaxClockSkew
				if want == 0 {
					want = max(tc.farm, 5*time.Second)
				}
				if got := s.cache.SetDefaultClockSkew(tc.farm); got != want || s.cache.Config().MaxClockSkew != want {
					t.Fatalf("clock skew bound = %v (Config %v), want %v", got, s.cache.Config().MaxClockSkew, want)
				}
				frozen := &tlstest.FrozenCache{}
				tlstest.MustDial(t, issuer.srv.Addr, issuer.client(tv.v, "localhost", frozen))
				// Its issuer, by its own clock, resumes it.
				if !tlstest.MustDial(t, issuer.srv.Addr, issuer.client(tv.v, "localhost", frozen)).DidResume {
					t.Fatal("the issuer did not resume its own ticket")
				}
				if got := tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", frozen)).DidResume; got != tc.resumes {
					t.Fatalf("ticket issued %v ahead resumed = %t, want %t", tc.lead, got, tc.resumes)
				}
				st := stats(s.cache)
				var refused uint64
				if !tc.resumes {
					refused = 1
				}
				if st.TicketsFuture != refused || st.TicketsAccepted != 1-refused {
					t.Fatalf("tickets refused as future %d, accepted %d; want %d, %d", st.TicketsFuture, st.TicketsAccepted, refused, 1-refused)
				}
			})
		}
	}
}

// TestStatelessSuccessorChainNotAhead: a ticket whose chain began ahead of
// now, within MaxClockSkew, resumes, and its successor's chain starts no
// later than now (as Insert takes a ChainStart), so the chain ends by
// MaxChainLifetime after it began by this clock, not its issuer's.
func TestStatelessSuccessorChainNotAhead(t *testing.T) {
	for _, tv := range versions {
		t.Run(tv.name, func(t *testing.T) {
			issuer := modeServer(t, session.Stateless, session.Config{Now: ahead(50 * time.Second)}, nil)
			var offset atomic.Int64
			s := modeServer(t, session.Stateless, session.Config{
				Now:              func() time.Time { return time.Now().Add(time.Duration(offset.Load())) },
				Lifetime:         time.Hour,
				MaxChainLifetime: time.Minute,
				MaxClockSkew:     time.Minute,
			}, nil)
			shared := &tlstest.SharedCache{}
			tlstest.MustDial(t, issuer.srv.Addr, issuer.client(tv.v, "localhost", shared))
			if !tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", shared)).DidResume {
				t.Fatal("ticket issued 50s ahead, within MaxClockSkew, did not resume")
			}
			// The successor's chain began when this server resumed the
			// ticket: 65 s later it has ended (it would be 15 s old from
			// the issuer's start).
			offset.Store(int64(65 * time.Second))
			if tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", shared)).DidResume {
				t.Fatal("successor resumed past MaxChainLifetime from its chain's start by this clock")
			}
			if st := stats(s.cache); st.ChainExpired != 1 || st.TicketsAccepted != 1 {
				t.Fatalf("chain expired %d, accepted %d; want 1, 1", st.ChainExpired, st.TicketsAccepted)
			}
		})
	}
}
