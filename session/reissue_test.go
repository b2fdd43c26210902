package session_test

import (
	"bytes"
	"crypto/tls"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// ticketLog is a client session cache that offers the newest session, like
// tlstest.SharedCache, and keeps every ticket it was given.
type ticketLog struct {
	mu      sync.Mutex
	cs      *tls.ClientSessionState
	tickets [][]byte
	tamper  func([]byte) []byte // if set, applied to the ticket offered
	frozen  bool                // if set, new tickets are ignored
}

func (l *ticketLog) Get(string) (*tls.ClientSessionState, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cs == nil || l.tamper == nil {
		return l.cs, l.cs != nil
	}
	// NewResumptionState sets the ticket of the state it is given: alter a
	// copy of the state.
	t, st, err := l.cs.ResumptionState()
	if err != nil {
		return nil, false
	}
	b, err := st.Bytes()
	if err != nil {
		return nil, false
	}
	if st, err = tls.ParseSessionState(b); err != nil {
		return nil, false
	}
	cs, err := tls.NewResumptionState(l.tamper(bytes.Clone(t)), st)
	return cs, err == nil
}

func (l *ticketLog) Put(_ string, cs *tls.ClientSessionState) {
	if cs == nil {
		return
	}
	t, _, err := cs.ResumptionState()
	if err != nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.frozen {
		return
	}
	l.cs = cs
	l.tickets = append(l.tickets, bytes.Clone(t))
}

func (l *ticketLog) all() [][]byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.tickets)
}

// A TLS 1.2 resumption keeps its master secret: the client gets a fresh
// ticket for the same session, not a successor, so nothing new is stored
// (or shared by a farm), and no two tickets look alike on the wire.
func TestTLS12ResumptionReissuesTicket(t *testing.T) {
	s := newServer(t, nil)
	var rec recorder
	s.cache.AddHook(session.EventNew|session.EventGet|session.EventRemove, rec.hook)
	log := &ticketLog{}
	ccfg := s.client(tls.VersionTLS12, "localhost", log)
	tlstest.MustDial(t, s.srv.Addr, ccfg)
	evs := rec.take()
	if len(evs) != 1 || evs[0].Kind != session.EventNew {
		t.Fatalf("events after the full handshake = %v, want one new", summary(evs))
	}
	id := evs[0].ID
	const resumptions = 4
	for i := range resumptions {
		if !tlstest.MustDial(t, s.srv.Addr, ccfg).DidResume {
			t.Fatalf("resumption %d did not resume", i+1)
		}
	}
	if got, want := summary(rec.take()), []string{"get/handshake/found=true", "get/handshake/found=true", "get/handshake/found=true", "get/handshake/found=true"}; len(got) != len(want) || got[0] != want[0] || got[3] != want[3] {
		t.Fatalf("events after resumptions = %v, want only lookups, no new session", got)
	}
	st := stats(s.cache)
	if st.Inserts != 1 || st.Size != 1 || st.Reissued != resumptions {
		t.Fatalf("inserts %d, size %d, reissued %d; want 1, 1, %d", st.Inserts, st.Size, st.Reissued, resumptions)
	}
	tickets := log.all()
	if len(tickets) != resumptions+1 {
		t.Fatalf("client got %d tickets, want %d", len(tickets), resumptions+1)
	}
	if !bytes.Equal(tickets[0], id[:]) {
		t.Fatalf("first ticket %x, want the ID %v", tickets[0], id)
	}
	seen := map[string]bool{}
	for i, tk := range tickets {
		if seen[string(tk)] {
			t.Fatalf("ticket %d was issued before: reissued tickets must not repeat", i)
		}
		seen[string(tk)] = true
		if i == 0 {
			continue
		}
		if bytes.Contains(tk, id[2:18]) {
			t.Fatalf("reissued ticket %d carries the ID's random bits in the clear", i)
		}
		got, ok := s.cache.CheckID(tk)
		if !ok || got != id {
			t.Fatalf("CheckID(reissued ticket %d) = %v, %t; want %v", i, got, ok, id)
		}
	}
	// The session still expires when it did: a reissued ticket does not
	// extend it.
	if r, ok := lookup(s.cache, id); !ok || time.Until(r.Expires) < time.Hour || time.Until(r.Expires) > 2*time.Hour {
		t.Fatalf("session after resumptions: found %t, expires in %v; want the lifetime of the first ticket", ok, time.Until(r.Expires))
	}
}

// A reissued ticket is the session's in every way that matters: Remove
// revokes it, the server name binds it, and one altered bit makes it forged.
func TestReissuedTicketFollowsSession(t *testing.T) {
	t.Run("revoked", func(t *testing.T) {
		s := newServer(t, nil)
		log := &ticketLog{}
		ccfg := s.client(tls.VersionTLS12, "localhost", log)
		tlstest.MustDial(t, s.srv.Addr, ccfg)
		tlstest.MustDial(t, s.srv.Addr, ccfg) // now holding a reissued ticket
		id, ok := s.cache.CheckID(log.all()[1])
		if !ok {
			t.Fatal("CheckID refused a reissued ticket")
		}
		if _, found := s.cache.Remove(id); !found {
			t.Fatal("Remove found nothing for the reissued ticket's ID")
		}
		if tlstest.MustDial(t, s.srv.Addr, ccfg).DidResume {
			t.Fatal("a reissued ticket resumed after its session was removed")
		}
	})
	t.Run("server name", func(t *testing.T) {
		s := newServer(t, nil)
		log := &ticketLog{}
		tlstest.MustDial(t, s.srv.Addr, s.client(tls.VersionTLS12, "a.example", log))
		tlstest.MustDial(t, s.srv.Addr, s.client(tls.VersionTLS12, "a.example", log))
		if cs := tlstest.MustDial(t, s.srv.Addr, s.client(tls.VersionTLS12, "b.example", log)); cs.DidResume {
			t.Fatal("a reissued ticket resumed under another server name")
		}
		if n := stats(s.cache).RefusedServerName; n != 1 {
			t.Fatalf("RefusedServerName = %d, want 1", n)
		}
	})
	t.Run("forged", func(t *testing.T) {
		s := newServer(t, nil)
		log := &ticketLog{}
		ccfg := s.client(tls.VersionTLS12, "localhost", log)
		tlstest.MustDial(t, s.srv.Addr, ccfg)
		tlstest.MustDial(t, s.srv.Addr, ccfg)
		log.frozen = true // offer the reissued ticket, altered, every time
		for _, at := range []int{1, 5, 20, 45} {
			log.tamper = func(b []byte) []byte { b[at] ^= 1; return b }
			if tlstest.MustDial(t, s.srv.Addr, ccfg).DidResume {
				t.Fatalf("a reissued ticket with byte %d altered resumed", at)
			}
		}
		if n := stats(s.cache).ForgedIDs; n != 4 {
			t.Fatalf("ForgedIDs = %d, want 4", n)
		}
		log.tamper = nil
		if !tlstest.MustDial(t, s.srv.Addr, ccfg).DidResume {
			t.Fatalf("the unaltered ticket did not resume: %+v", stats(s.cache))
		}
	})
}

// Another cache with the same ID keys opens a reissued ticket and finds the
// session through its loader, as a farm's node does.
func TestReissuedTicketResumesElsewhere(t *testing.T) {
	key := session.IDKey{ID: 3, Key: [32]byte{1, 2, 3}}
	a := newServer(t, nil)
	b := newServer(t, nil)
	for _, s := range []*farmServer{a, b} {
		if err := s.cache.SetIDKeys(key); err != nil {
			t.Fatal(err)
		}
	}
	farm, loads := loadsFrom(a.cache)
	b.cache.Join(farm, time.Second)
	log := &ticketLog{}
	tlstest.MustDial(t, a.srv.Addr, a.client(tls.VersionTLS12, "localhost", log))
	tlstest.MustDial(t, a.srv.Addr, a.client(tls.VersionTLS12, "localhost", log))
	if n := len(log.all()); n != 2 || stats(a.cache).Reissued != 1 {
		t.Fatalf("A issued %d tickets, reissued %d; want 2 and 1", n, stats(a.cache).Reissued)
	}
	if !tlstest.MustDial(t, b.srv.Addr, b.client(tls.VersionTLS12, "localhost", log)).DidResume {
		t.Fatal("B did not resume A's reissued ticket")
	}
	if loads() != 1 || stats(b.cache).Inserts != 1 {
		t.Fatalf("B loaded %d times and inserted %d sessions, want 1 and 1", loads(), stats(b.cache).Inserts)
	}
}

// A resumption gets a successor where a reissued ticket would not do: once
// the session is past half its lifetime (so an active client's session is
// renewed), in TLS 1.3 (a new secret), and under SingleUse.
func TestResumptionSuccessor(t *testing.T) {
	for _, tc := range []struct {
		name    string
		version uint16
		cfg     session.Config
		age     time.Duration
		want    bool // a successor
	}{
		{"TLS1.2 young", tls.VersionTLS12, session.Config{}, 59 * time.Minute, false},
		{"TLS1.2 past half its lifetime", tls.VersionTLS12, session.Config{}, 61 * time.Minute, true},
		{"TLS1.2 near its chain's end", tls.VersionTLS12, session.Config{MaxChainLifetime: 2*time.Hour + 20*time.Minute}, 61 * time.Minute, false},
		{"TLS1.2 single use", tls.VersionTLS12, session.Config{SingleUse: true}, 0, true},
		{"TLS1.3", tls.VersionTLS13, session.Config{}, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := newClock()
			cfg := tc.cfg
			cfg.Now = clk.Now
			s := newServer(t, &cfg)
			var rec recorder
			s.cache.AddHook(session.EventNew, rec.hook)
			ccfg := s.client(tc.version, "localhost", tls.NewLRUClientSessionCache(4))
			tlstest.MustDial(t, s.srv.Addr, ccfg)
			first := rec.take()
			clk.Advance(tc.age)
			if !tlstest.MustDial(t, s.srv.Addr, ccfg).DidResume {
				t.Fatal("did not resume")
			}
			news := rec.take()
			if got := len(news) == 1; got != tc.want {
				t.Fatalf("successor issued: %t (%d new sessions, reissued %d), want %t", got, len(news), stats(s.cache).Reissued, tc.want)
			}
			if tc.want && (news[0].Record.Parent != first[0].ID || news[0].Record.Chain != first[0].Record.Chain) {
				t.Fatal("the successor is not linked to the session it resumed")
			}
			if !tc.want && stats(s.cache).Reissued != 1 {
				t.Fatalf("reissued %d, want 1", stats(s.cache).Reissued)
			}
		})
	}
}
