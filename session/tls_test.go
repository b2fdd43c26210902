package session_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

var versions = []struct {
	name string
	v    uint16
}{
	{"TLS1.2", tls.VersionTLS12},
	{"TLS1.3", tls.VersionTLS13},
}

// recorder is a hook that keeps the events it sees.
type recorder struct {
	mu  sync.Mutex
	evs []session.Event
}

func (r *recorder) hook(ev session.Event) {
	r.mu.Lock()
	r.evs = append(r.evs, ev)
	r.mu.Unlock()
}

func (r *recorder) take() []session.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	evs := r.evs
	r.evs = nil
	return evs
}

// summary renders events as "kind/origin[/found|/reason]" for comparison.
func summary(evs []session.Event) []string {
	var out []string
	for _, ev := range evs {
		s := ev.Kind.String() + "/" + ev.Origin.String()
		switch ev.Kind {
		case session.EventGet:
			s += fmt.Sprintf("/found=%t", ev.Record.State != nil)
		case session.EventRemove:
			s += "/" + ev.Reason.String()
		}
		out = append(out, s)
	}
	return out
}

// farmServer is one TLS server using a cache through Install.
type farmServer struct {
	cache *session.Cache
	srv   *tlstest.Server
	pool  *x509.CertPool
	cfg   *tls.Config
}

func newServer(t *testing.T, cc *session.Config) *farmServer {
	t.Helper()
	cert, pool := tlstest.SharedCert()
	cache, err := session.New(cc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cache.Close() })
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	cache.Install(cfg)
	srv := tlstest.Serve(t, "n1", cfg, cache.HandshakeComplete)
	return &farmServer{cache: cache, srv: srv, pool: pool, cfg: cfg}
}

func (s *farmServer) client(version uint16, sni string, cache tls.ClientSessionCache) *tls.Config {
	return tlstest.ClientConfig(s.pool, sni, version, cache)
}

func TestResumeWithGoClient(t *testing.T) {
	for _, tv := range versions {
		t.Run(tv.name, func(t *testing.T) {
			s := newServer(t, nil)
			var rec recorder
			s.cache.AddHook(session.EventNew|session.EventGet|session.EventRemove, rec.hook)
			ccfg := s.client(tv.v, "localhost", tls.NewLRUClientSessionCache(8))

			cs := tlstest.MustDial(t, s.srv.Addr, ccfg)
			if cs.DidResume {
				t.Fatal("first connection resumed")
			}
			if got, want := summary(rec.take()), []string{"new/handshake"}; !slices.Equal(got, want) {
				t.Fatalf("events after full handshake = %v, want %v", got, want)
			}
			// A TLS 1.3 resumption has a new secret, so a successor; a TLS
			// 1.2 one keeps its session, under a reissued ticket.
			want, inserts := []string{"get/handshake/found=true", "new/handshake"}, uint64(4)
			if tv.v == tls.VersionTLS12 {
				want, inserts = want[:1], 1
			}
			for i := range 3 {
				cs = tlstest.MustDial(t, s.srv.Addr, ccfg)
				if !cs.DidResume {
					t.Fatalf("connection %d did not resume", i+2)
				}
				if got := summary(rec.take()); !slices.Equal(got, want) {
					t.Fatalf("events after resumption = %v, want %v", got, want)
				}
			}
			st := stats(s.cache)
			if st.Hits != 3 || st.Inserts != inserts {
				t.Fatalf("stats = %+v, want 3 hits and %d inserts", st, inserts)
			}
			if errs := s.srv.HandshakeErrors(); len(errs) > 0 {
				t.Fatalf("server handshake errors: %v", errs)
			}
		})
	}
}

func TestChainLinksResumedTickets(t *testing.T) {
	for _, tv := range versions {
		t.Run(tv.name, func(t *testing.T) {
			// Past half its lifetime, so that a TLS 1.2 resumption too is
			// given a successor rather than a reissued ticket.
			clk := newClock()
			s := newServer(t, &session.Config{ResumeGrace: 5 * time.Second, Now: clk.Now})
			var rec recorder
			s.cache.AddHook(session.EventNew, rec.hook)
			ccfg := s.client(tv.v, "localhost", tls.NewLRUClientSessionCache(8))
			tlstest.MustDial(t, s.srv.Addr, ccfg)
			first := rec.take()[0]
			clk.Advance(61 * time.Minute)
			if !tlstest.MustDial(t, s.srv.Addr, ccfg).DidResume {
				t.Fatal("did not resume")
			}
			second := rec.take()[0]
			if second.Record.Chain != first.Record.Chain || !second.Record.ChainStart.Equal(first.Record.ChainStart) {
				t.Fatalf("resumed ticket chain = %x@%v, want %x@%v", second.Record.Chain, second.Record.ChainStart, first.Record.Chain, first.Record.ChainStart)
			}
			if second.ID == first.ID {
				t.Fatal("resumption re-issued the same ID")
			}
			if second.Record.Parent != first.ID || first.Record.Parent != (session.ID{}) {
				t.Fatalf("parents: first %v, second %v; want none and the first", first.Record.Parent, second.Record.Parent)
			}
			// The resumed session was cut to the grace period.
			r, ok := lookup(s.cache, first.ID)
			if !ok {
				t.Fatal("resumed session gone before its grace ended")
			}
			if left := r.Expires.Sub(clk.Now()); left > 5*time.Second || left < 3*time.Second {
				t.Fatalf("resumed session expires in %v, want about the 5s grace", left)
			}
			if r2, _ := lookup(s.cache, second.ID); r2.Expires.Sub(clk.Now()) < time.Hour {
				t.Fatalf("new ticket expires in %v, want the full lifetime", r2.Expires.Sub(clk.Now()))
			}
		})
	}
}

func TestServerNameMismatchRefused(t *testing.T) {
	for _, tv := range versions {
		t.Run(tv.name, func(t *testing.T) {
			s := newServer(t, nil)
			frozen := &tlstest.FrozenCache{}
			tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "a.example", frozen))
			if cs := tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "b.example", frozen)); cs.DidResume {
				t.Fatal("session issued for a.example resumed under b.example")
			}
			if n := stats(s.cache).RefusedServerName; n != 1 {
				t.Fatalf("RefusedServerName = %d, want 1", n)
			}
			// The same ticket under its own name still resumes.
			if cs := tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "a.example", frozen)); !cs.DidResume {
				t.Fatal("session did not resume under its own server name")
			}
		})
	}
}

func TestServerNameMismatchAllowed(t *testing.T) {
	s := newServer(t, &session.Config{AllowServerNameMismatch: true})
	frozen := &tlstest.FrozenCache{}
	tlstest.MustDial(t, s.srv.Addr, s.client(tls.VersionTLS13, "a.example", frozen))
	if cs := tlstest.MustDial(t, s.srv.Addr, s.client(tls.VersionTLS13, "b.example", frozen)); !cs.DidResume {
		t.Fatal("AllowServerNameMismatch: session did not resume under another name")
	}
}

func TestExpiredSessionNotResumed(t *testing.T) {
	for _, tv := range versions {
		t.Run(tv.name, func(t *testing.T) {
			clk := newClock()
			s := newServer(t, &session.Config{Lifetime: time.Minute, Now: clk.Now})
			var rec recorder
			s.cache.AddHook(session.EventRemove, rec.hook)
			frozen := &tlstest.FrozenCache{}
			tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", frozen))
			clk.Advance(61 * time.Second)
			if cs := tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", frozen)); cs.DidResume {
				t.Fatal("expired session resumed")
			}
			if got := summary(rec.take()); !slices.Contains(got, "remove/handshake/expired") {
				t.Fatalf("events = %v, want an expiry", got)
			}
		})
	}
}

func TestChainLifetimeBound(t *testing.T) {
	for _, tv := range versions {
		t.Run(tv.name, func(t *testing.T) {
			clk := newClock()
			s := newServer(t, &session.Config{Lifetime: time.Hour, MaxChainLifetime: 90 * time.Minute, Now: clk.Now})
			ccfg := s.client(tv.v, "localhost", tls.NewLRUClientSessionCache(8))
			tlstest.MustDial(t, s.srv.Addr, ccfg)
			// Every 50 minutes the client resumes and takes the new ticket.
			clk.Advance(50 * time.Minute)
			if !tlstest.MustDial(t, s.srv.Addr, ccfg).DidResume {
				t.Fatal("did not resume at 50m")
			}
			clk.Advance(50 * time.Minute)
			if tlstest.MustDial(t, s.srv.Addr, ccfg).DidResume {
				t.Fatal("chain resumed past MaxChainLifetime")
			}
			// The full handshake began a new chain.
			clk.Advance(50 * time.Minute)
			if !tlstest.MustDial(t, s.srv.Addr, ccfg).DidResume {
				t.Fatal("new chain did not resume")
			}
		})
	}
}

func TestEvictedSessionNotResumed(t *testing.T) {
	s := newServer(t, &session.Config{Capacity: 1, Buckets: 1})
	var rec recorder
	s.cache.AddHook(session.EventRemove, rec.hook)
	frozen := &tlstest.FrozenCache{}
	tlstest.MustDial(t, s.srv.Addr, s.client(tls.VersionTLS13, "localhost", frozen))
	tlstest.MustDial(t, s.srv.Addr, s.client(tls.VersionTLS13, "localhost", tls.NewLRUClientSessionCache(1)))
	if got, want := summary(rec.take()), []string{"remove/handshake/evicted"}; !slices.Equal(got, want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
	if tlstest.MustDial(t, s.srv.Addr, s.client(tls.VersionTLS13, "localhost", frozen)).DidResume {
		t.Fatal("evicted session resumed")
	}
}

func TestRemoveRevokesChain(t *testing.T) {
	for _, tv := range versions {
		t.Run(tv.name, func(t *testing.T) {
			clk := newClock() // aged past half its lifetime: TLS 1.2 gets successors too
			s := newServer(t, &session.Config{Now: clk.Now})
			var rec recorder
			s.cache.AddHook(session.EventNew, rec.hook)
			frozen := &tlstest.FrozenCache{}
			tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", frozen))
			first := rec.take()[0].ID
			clk.Advance(61 * time.Minute)
			// Resume twice from the frozen ticket: the chain now has the
			// first ticket (in its grace) and the second child, which
			// replaced the first child (bounded children).
			for range 2 {
				if !tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", frozen)).DidResume {
					t.Fatal("did not resume")
				}
			}
			later := rec.take()
			var rm recorder
			s.cache.AddHook(session.EventRemove, rm.hook)
			if _, ok := lookup(s.cache, later[0].ID); ok {
				t.Fatal("the first child outlived its replacement")
			}
			if _, ok := s.cache.Remove(later[1].ID); !ok {
				t.Fatal("Remove did not find the session")
			}
			if got := summary(rm.take()); len(got) != 2 || got[0] != "remove/api/removed" {
				t.Fatalf("remove events = %v, want 2 api removals", got)
			}
			for _, id := range []session.ID{first, later[0].ID, later[1].ID} {
				if _, ok := lookup(s.cache, id); ok {
					t.Fatalf("session %v of the revoked chain is still cached", id)
				}
			}
			if tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", frozen)).DidResume {
				t.Fatal("revoked session resumed")
			}
			// A peer re-inserting a session of the revoked chain is refused.
			// (Its own record: inserted as first, whose child it is, it
			// would name itself as its parent, and be refused as invalid.)
			if err := s.cache.Insert(later[0].ID, later[0].Record, session.OriginPeer); err != session.ErrRevoked {
				t.Fatalf("Insert into revoked chain: err = %v, want ErrRevoked", err)
			}
		})
	}
}

// TestRevokeAgainAfterTombstoneLapsed revokes a chain for a minute, lets a
// late copy of its session come back once that revocation has lapsed (but
// before a sweep forgets it), and revokes the chain again: the session is
// removed, and does not resume.
func TestRevokeAgainAfterTombstoneLapsed(t *testing.T) {
	for _, tv := range versions {
		t.Run(tv.name, func(t *testing.T) {
			clk := newClock()
			s := newServer(t, &session.Config{Now: clk.Now, SweepInterval: -1})
			var rec recorder
			s.cache.AddHook(session.EventNew, rec.hook)
			frozen := &tlstest.FrozenCache{}
			tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", frozen))
			ev := rec.take()[0]
			if n := s.cache.RemoveChain(ev.Record.Chain, clk.Now().Add(time.Minute), session.OriginPeer); n != 1 {
				t.Fatalf("RemoveChain removed %d sessions, want 1", n)
			}
			clk.Advance(2 * time.Minute)
			if err := s.cache.Insert(ev.ID, ev.Record, session.OriginPeer); err != nil {
				t.Fatalf("Insert after the revocation lapsed: %v", err)
			}
			if n := s.cache.RemoveChain(ev.Record.Chain, s.cache.ChainEnd(ev.Record), session.OriginAPI); n != 1 {
				t.Fatalf("revoking the chain again removed %d sessions, want 1", n)
			}
			if tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", frozen)).DidResume {
				t.Fatal("a session of a chain revoked again resumed")
			}
		})
	}
}

func TestSingleUse(t *testing.T) {
	for _, tv := range versions {
		t.Run(tv.name, func(t *testing.T) {
			s := newServer(t, &session.Config{SingleUse: true})
			frozen := &tlstest.FrozenCache{}
			tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", frozen))
			if !tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", frozen)).DidResume {
				t.Fatal("first resumption failed")
			}
			if tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", frozen)).DidResume {
				t.Fatal("single-use session resumed twice")
			}
			if n := stats(s.cache).Retired; n != 1 {
				t.Fatalf("Retired = %d, want 1", n)
			}
			// A client that takes each new ticket keeps resuming.
			lru := tls.NewLRUClientSessionCache(4)
			tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", lru))
			for i := range 3 {
				if !tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", lru)).DidResume {
					t.Fatalf("resumption %d with fresh tickets failed", i)
				}
			}
		})
	}
}

// TestLoaderResumesOnAnotherServer shows the miss path: server B does not
// have the session, its Loader fetches it from server A's cache.
func TestLoaderResumesOnAnotherServer(t *testing.T) {
	for _, tv := range versions {
		t.Run(tv.name, func(t *testing.T) {
			keys := []session.IDKey{{ID: 7, Key: [32]byte{1, 2, 3}}}
			a := newServer(t, nil)
			a.cache.SetIDKeys(keys...)
			b := newServer(t, nil)
			b.cache.SetIDKeys(keys...)
			farm, loads := loadsFrom(a.cache)
			b.cache.Join(farm, time.Second)
			shared := &tlstest.SharedCache{}
			tlstest.MustDial(t, a.srv.Addr, a.client(tv.v, "localhost", shared))
			cs := tlstest.MustDial(t, b.srv.Addr, b.client(tv.v, "localhost", shared))
			if !cs.DidResume {
				t.Fatal("B did not resume A's session through the loader")
			}
			st := stats(b.cache)
			if st.LoaderHits != 1 || loads() != 1 {
				t.Fatalf("loader hits = %d, calls = %d, want 1 and 1", st.LoaderHits, loads())
			}
		})
	}
}

// TestLoadedRecordWithoutChain: a Farm may return a record with no chain
// (Insert then draws one). The successor a handshake issues from it must be
// in the chain the cache gave it, so that revoking the loaded session also
// revokes the successor.
func TestLoadedRecordWithoutChain(t *testing.T) {
	for _, tv := range versions {
		t.Run(tv.name, func(t *testing.T) {
			keys := []session.IDKey{{ID: 7, Key: [32]byte{1, 2, 3}}}
			clk := newClock() // aged past half its lifetime: TLS 1.2 gets a successor too
			a := newServer(t, &session.Config{Now: clk.Now})
			a.cache.SetIDKeys(keys...)
			b := newServer(t, &session.Config{Now: clk.Now})
			b.cache.SetIDKeys(keys...)
			b.cache.Join(loadFunc(func(_ context.Context, id session.ID) (*session.Record, error) {
				r, ok := lookup(a.cache, id)
				if !ok {
					return nil, nil
				}
				r.Chain = 0
				return &r, nil
			}), time.Second)
			var rec recorder
			b.cache.AddHook(session.EventNew, rec.hook)
			shared := &tlstest.SharedCache{}
			tlstest.MustDial(t, a.srv.Addr, a.client(tv.v, "localhost", shared))
			clk.Advance(61 * time.Minute)
			if !tlstest.MustDial(t, b.srv.Addr, b.client(tv.v, "localhost", shared)).DidResume {
				t.Fatal("B did not resume A's session through the loader")
			}
			evs := rec.take()
			if len(evs) != 2 || evs[0].Origin != session.OriginLoader || evs[1].Origin != session.OriginHandshake {
				t.Fatalf("events on B = %v, want the loaded session and its successor", summary(evs))
			}
			if _, ok := b.cache.Remove(evs[0].ID); !ok {
				t.Fatal("Remove did not find the loaded session")
			}
			if _, ok := lookup(b.cache, evs[1].ID); ok {
				t.Fatal("the successor of a revoked session is still cached")
			}
			if tlstest.MustDial(t, b.srv.Addr, b.client(tv.v, "localhost", shared)).DidResume {
				t.Fatal("the successor of a revoked session resumed")
			}
		})
	}
}

// TestGetReturnsOwnedState: the tls.SessionState that Get returns is the
// caller's. Changing its Extra entries in place, or appending to one, must
// not change the session the cache holds (and hands to handshakes, hooks
// and peers).
func TestGetReturnsOwnedState(t *testing.T) {
	s := newServer(t, nil)
	var rec recorder
	s.cache.AddHook(session.EventNew, rec.hook)
	tlstest.MustDial(t, s.srv.Addr, s.client(tls.VersionTLS13, "localhost", tlstest.NoResume{}))
	ev := rec.take()[0]
	ss, err := tls.ParseSessionState(ev.Record.State)
	if err != nil {
		t.Fatal(err)
	}
	ss.Extra = [][]byte{[]byte("first"), []byte("second")}
	state, err := ss.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(state)
	id := s.cache.NewID()
	if err := s.cache.Insert(id, session.Record{State: state, ServerName: "localhost", Expires: time.Now().Add(time.Hour)}, session.OriginAPI); err != nil {
		t.Fatal(err)
	}
	got, ok := s.cache.Get(id)
	if !ok || len(got.Extra) != 2 {
		t.Fatalf("Get = %v, %t; want the session with its two Extra entries", got, ok)
	}
	copy(got.Extra[1], "XXXXXX")
	got.Extra[0] = append(got.Extra[0], "YYYYYYYY"...)
	buf := make([]byte, 2*len(want))
	n, ok := s.cache.GetBuffer(id, buf)
	if !ok || !bytes.Equal(buf[:n], want) {
		t.Fatal("changing the session Get returned changed the session in the cache")
	}
}

// clock is a settable time source for expiry tests.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}
