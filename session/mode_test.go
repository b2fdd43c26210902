package session_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// modeServer is a server in the given mode whose ticket keys and ID keys are
// shared with the other servers of a test.
func modeServer(t *testing.T, mode session.Mode, cc session.Config, farm session.Farm) *farmServer {
	t.Helper()
	cert, pool := tlstest.SharedCert()
	cc.Mode = mode
	cache, err := session.New(&cc)
	if err != nil {
		t.Fatal(err)
	}
	if err := cache.SetIDKeys(session.IDKey{ID: 1, Key: [32]byte{9}}); err != nil {
		t.Fatal(err)
	}
	if farm != nil {
		cache.Join(farm, 0)
	}
	t.Cleanup(func() { cache.Close() })
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	cfg.SetSessionTicketKeys([][32]byte{{1, 2, 3}})
	cache.Install(cfg)
	return &farmServer{cache: cache, srv: tlstest.Serve(t, mode.String(), cfg, cache.HandshakeComplete), pool: pool, cfg: cfg}
}

func TestStatelessMode(t *testing.T) {
	for _, tv := range versions {
		t.Run(tv.name, func(t *testing.T) {
			s := modeServer(t, session.Stateless, session.Config{}, nil)
			ccfg := s.client(tv.v, "a.example", tls.NewLRUClientSessionCache(4))
			tlstest.MustDial(t, s.srv.Addr, ccfg)
			for i := range 2 {
				if !tlstest.MustDial(t, s.srv.Addr, ccfg).DidResume {
					t.Fatalf("stateless resumption %d failed", i)
				}
			}
			st := stats(s.cache)
			if st.TicketsIssued != 3 || st.TicketsAccepted != 2 || st.Size != 0 {
				t.Fatalf("issued %d, accepted %d, cached %d; want 3, 2, 0", st.TicketsIssued, st.TicketsAccepted, st.Size)
			}
			// The binding in the ticket refuses another server name.
			frozen := &tlstest.FrozenCache{}
			tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "a.example", frozen))
			if tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "b.example", frozen)).DidResume {
				t.Fatal("stateless ticket for a.example resumed under b.example")
			}
			if stats(s.cache).RefusedServerName != 1 {
				t.Fatal("refusal not counted")
			}
		})
	}
}

// TestModeSwitchWithoutCliff moves a farm from stateful to stateless through
// mixed: tickets issued in each phase keep resuming on servers of the next.
func TestModeSwitchWithoutCliff(t *testing.T) {
	for _, tv := range versions {
		t.Run(tv.name, func(t *testing.T) {
			stateful := modeServer(t, session.Stateful, session.Config{}, nil)
			// Share the stateful server's sessions, as a farm would.
			mixed := modeServer(t, session.Mixed, session.Config{}, loaderFrom(stateful.cache))
			stateless := modeServer(t, session.Stateless, session.Config{}, nil)

			// A session ID issued before the switch resumes on a mixed server.
			idClient := &tlstest.FrozenCache{}
			tlstest.MustDial(t, stateful.srv.Addr, stateful.client(tv.v, "localhost", idClient))
			if !tlstest.MustDial(t, mixed.srv.Addr, mixed.client(tv.v, "localhost", idClient)).DidResume {
				t.Fatal("mixed server refused a session ID")
			}
			// A ticket from a stateless server resumes on a mixed server...
			ticketClient := &tlstest.FrozenCache{}
			tlstest.MustDial(t, stateless.srv.Addr, stateless.client(tv.v, "localhost", ticketClient))
			if !tlstest.MustDial(t, mixed.srv.Addr, mixed.client(tv.v, "localhost", ticketClient)).DidResume {
				t.Fatal("mixed server refused a stateless ticket")
			}
			// ...but not on a stateful one, which is why the switch passes through mixed.
			if tlstest.MustDial(t, stateful.srv.Addr, stateful.client(tv.v, "localhost", ticketClient)).DidResume {
				t.Fatal("stateful server accepted a stateless ticket")
			}
		})
	}
}

// TestStatelessLongServerName: a ticket for a server name too long for the
// handshake's scratch room for the binding, and in mixed case, resumes under
// that name in any case and under no other.
func TestStatelessLongServerName(t *testing.T) {
	long := "Very-Long-Server-Name-For-The-Binding.a.example"
	for _, tv := range versions {
		t.Run(tv.name, func(t *testing.T) {
			s := modeServer(t, session.Stateless, session.Config{}, nil)
			frozen := &tlstest.FrozenCache{}
			client := func(name string) *tls.Config {
				c := s.client(tv.v, name, frozen)
				c.InsecureSkipVerify = true // the certificate has no such names; this tests the ticket's binding
				return c
			}
			tlstest.MustDial(t, s.srv.Addr, client(long))
			if !tlstest.MustDial(t, s.srv.Addr, client(strings.ToLower(long))).DidResume {
				t.Fatal("ticket for a long server name did not resume")
			}
			if tlstest.MustDial(t, s.srv.Addr, client(long+"x")).DidResume {
				t.Fatal("ticket for a long server name resumed under another name")
			}
		})
	}
}

// TestStatelessLifetimes checks that stateless tickets obey Lifetime and
// MaxChainLifetime through the binding the glue puts in them.
func TestStatelessLifetimes(t *testing.T) {
	for _, tv := range versions {
		t.Run(tv.name, func(t *testing.T) {
			clk := newClock()
			s := modeServer(t, session.Stateless, session.Config{Now: clk.Now, Lifetime: time.Hour, MaxChainLifetime: 90 * time.Minute}, nil)
			lru := tls.NewLRUClientSessionCache(4)
			tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", lru))
			clk.Advance(50 * time.Minute)
			if !tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", lru)).DidResume {
				t.Fatal("did not resume within lifetime")
			}
			clk.Advance(50 * time.Minute) // the ticket is 50m old, its chain 100m
			if tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", lru)).DidResume {
				t.Fatal("stateless chain resumed past MaxChainLifetime")
			}
			if n := stats(s.cache).ChainExpired; n != 1 {
				t.Fatalf("ChainExpired = %d, want 1", n)
			}
			frozen := &tlstest.FrozenCache{}
			tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", frozen))
			clk.Advance(61 * time.Minute)
			if tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", frozen)).DidResume {
				t.Fatal("stateless ticket resumed past Lifetime")
			}
		})
	}
}

func loaderFrom(c *session.Cache) session.Farm {
	return loadFunc(func(_ context.Context, id session.ID) (*session.Record, error) {
		r, ok := lookup(c, id)
		if !ok {
			return nil, nil
		}
		return &r, nil
	})
}

// TestUndecryptableTicketIsNotAForgedID checks that a stateless ticket that
// does not decrypt is counted as such, not as a forged session ID.
func TestUndecryptableTicketIsNotAForgedID(t *testing.T) {
	s := modeServer(t, session.Stateless, session.Config{}, nil)
	child, err := s.cfg.GetConfigForClient(&tls.ClientHelloInfo{ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	junk := bytes.Repeat([]byte{0xff}, 200)
	if ss, err := child.UnwrapSession(junk, tls.ConnectionState{ServerName: "localhost"}); ss != nil || err != nil {
		t.Fatalf("UnwrapSession(junk) = %v, %v; want nil, nil", ss, err)
	}
	if st := stats(s.cache); st.TicketsUndecryptable != 1 || st.ForgedIDs != 0 {
		t.Fatalf("undecryptable %d, forged IDs %d; want 1 and 0", st.TicketsUndecryptable, st.ForgedIDs)
	}
}
