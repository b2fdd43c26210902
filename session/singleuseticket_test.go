package session_test

import (
	"crypto/tls"
	"testing"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestSingleUseRefusesStatelessTickets: a stateless ticket is held nowhere
// and cannot be retired, so a SingleUse cache must not resume one at all —
// not in Mixed mode (a farm passing from Stateless to single use), and not
// in Stateful mode once SetTicketFallback(0) makes it accept the farm's
// tickets (a farm node sharing ticket keys does that; a node without single
// use, or one that ran Stateless before, issued the ticket). Resumed, the
// same ticket resumed again and again.
func TestSingleUseRefusesStatelessTickets(t *testing.T) {
	t.Parallel()
	for _, mode := range []session.Mode{session.Mixed, session.Stateful} {
		for _, tv := range versions {
			t.Run(mode.String()+"/"+tv.name, func(t *testing.T) {
				issuer := modeServer(t, session.Stateless, session.Config{}, nil)
				single := modeServer(t, mode, session.Config{SingleUse: true}, nil)
				if mode == session.Stateful {
					single.cache.SetTicketFallback(0)
				}
				frozen := &tlstest.FrozenCache{}
				tlstest.MustDial(t, issuer.srv.Addr, issuer.client(tv.v, "localhost", frozen))
				resumed := 0
				for range 3 {
					if tlstest.MustDial(t, single.srv.Addr, single.client(tv.v, "localhost", frozen)).DidResume {
						resumed++
					}
				}
				if resumed != 0 {
					t.Fatalf("a SingleUse %v cache resumed one stateless ticket %d times of 3; a ticket cannot be retired, so want none",
						mode, resumed)
				}
				if st := stats(single.cache); st.TicketsAccepted != 0 || st.TicketsSingleUse != 3 {
					t.Fatalf("tickets accepted %d, refused as single use %d; want 0 and 3", st.TicketsAccepted, st.TicketsSingleUse)
				}
				// Its own sessions still resume once.
				own := &tlstest.FrozenCache{}
				tlstest.MustDial(t, single.srv.Addr, single.client(tv.v, "localhost", own))
				if !tlstest.MustDial(t, single.srv.Addr, single.client(tv.v, "localhost", own)).DidResume {
					t.Fatal("the cache's own single-use session did not resume")
				}
			})
		}
	}
}

// TestSingleUseWithoutPerHandshakeConfig: the WrapSession and UnwrapSession
// that Install sets on the config itself serve a configuration used without
// its GetConfigForClient. They know nothing of the handshake, so they can
// take no single-use claim, and a SingleUse cache must resume nothing
// there: it used to resume one session ID again and again.
func TestSingleUseWithoutPerHandshakeConfig(t *testing.T) {
	t.Parallel()
	for _, tv := range versions {
		t.Run(tv.name, func(t *testing.T) {
			cert, pool := tlstest.SharedCert()
			cache, err := session.New(&session.Config{SingleUse: true})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cache.Close() })
			cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
			cache.Install(cfg)
			plain := cfg.Clone()
			plain.GetConfigForClient = nil
			srv := tlstest.Serve(t, "plain", plain, cache.HandshakeComplete)
			frozen := &tlstest.FrozenCache{}
			ccfg := func() *tls.Config { return tlstest.ClientConfig(pool, "localhost", tv.v, frozen) }
			tlstest.MustDial(t, srv.Addr, ccfg())
			if stats(cache).Size != 1 {
				t.Fatal("the full handshake stored no session")
			}
			resumed := 0
			for range 3 {
				if tlstest.MustDial(t, srv.Addr, ccfg()).DidResume {
					resumed++
				}
			}
			if resumed > 1 {
				t.Fatalf("a single-use session resumed %d times of 3 through the config's own UnwrapSession", resumed)
			}
		})
	}
}
