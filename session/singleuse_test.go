package session_test

import (
	"crypto/tls"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestSingleUseConcurrent offers one single-use session in many concurrent
// handshakes: exactly one resumes.
func TestSingleUseConcurrent(t *testing.T) {
	t.Parallel()
	for _, tv := range versions {
		t.Run(tv.name, func(t *testing.T) {
			s := newServer(t, &session.Config{SingleUse: true})
			frozen := &tlstest.FrozenCache{}
			tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", frozen))
			const n = 16
			var resumed atomic.Int32
			var wg sync.WaitGroup
			start := make(chan struct{})
			for range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					if tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", frozen)).DidResume {
						resumed.Add(1)
					}
				}()
			}
			close(start)
			wg.Wait()
			st := stats(s.cache)
			if got := resumed.Load(); got != 1 {
				t.Fatalf("%d of %d concurrent handshakes resumed one single-use session, want exactly 1 (stats %+v)", got, n, st)
			}
			if st.Retired != 1 {
				t.Fatalf("Retired = %d, want 1", st.Retired)
			}
			if tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", frozen)).DidResume {
				t.Fatal("resumed again after it was consumed")
			}
		})
	}
}

// TestSingleUseFailedHandshakeReleases checks that a handshake that presents
// a single-use session and then fails does not burn it: the claim is
// released and the session resumes afterwards.
func TestSingleUseFailedHandshakeReleases(t *testing.T) {
	t.Parallel()
	for _, tv := range versions {
		t.Run(tv.name, func(t *testing.T) {
			s := newServer(t, &session.Config{SingleUse: true})
			frozen := &tlstest.FrozenCache{}
			tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", frozen))
			bad := s.client(tv.v, "localhost", frozen)
			bad.VerifyConnection = func(tls.ConnectionState) error { return errors.New("abort") }
			if _, err := tlstest.Dial(s.srv.Addr, bad); err == nil {
				t.Fatal("the aborting client's handshake succeeded")
			}
			deadline := time.Now().Add(10 * time.Second)
			for stats(s.cache).SingleUseReleased == 0 {
				if time.Now().After(deadline) {
					t.Fatalf("claim of the failed handshake never released: %+v", stats(s.cache))
				}
				time.Sleep(20 * time.Millisecond)
			}
			if !tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", frozen)).DidResume {
				t.Fatal("a failed handshake burnt the single-use session")
			}
			if tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", frozen)).DidResume {
				t.Fatal("single-use session resumed twice")
			}
		})
	}
}

// TestBoundedChildren resumes one ticket 50 times within its grace: the
// cache grows by at most one session (the newest child).
func TestBoundedChildren(t *testing.T) {
	t.Parallel()
	for _, tv := range versions {
		t.Run(tv.name, func(t *testing.T) {
			clk := newClock() // aged past half its lifetime: TLS 1.2 gets successors too
			s := newServer(t, &session.Config{Now: clk.Now})
			frozen := &tlstest.FrozenCache{}
			tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", frozen))
			clk.Advance(61 * time.Minute)
			before := stats(s.cache).Size
			for i := range 50 {
				if !tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", frozen)).DidResume {
					t.Fatalf("resumption %d failed", i)
				}
			}
			if got := stats(s.cache).Size; got > before+1 {
				t.Fatalf("50 resumptions of one ticket grew the cache from %d to %d sessions, want at most +1", before, got)
			}
			if st := stats(s.cache); st.ChildrenReplaced != 49 {
				t.Fatalf("ChildrenReplaced = %d, want 49", st.ChildrenReplaced)
			}
		})
	}
}

// TestTicketFallback: a stateful cache told to fall back issues
// short-lived tickets that another stateful cache with the same ticket keys
// accepts (told by SetTicketFallback(0) that the keys are farm-wide) until
// they expire; a single-use cache never falls back.
func TestTicketFallback(t *testing.T) {
	t.Parallel()
	for _, tv := range versions {
		t.Run(tv.name, func(t *testing.T) {
			a := modeServer(t, session.Stateful, session.Config{}, nil)
			b := modeServer(t, session.Stateful, session.Config{}, nil)
			b.cache.SetTicketFallback(0)
			a.cache.SetTicketFallback(time.Second)
			frozen := &tlstest.FrozenCache{}
			tlstest.MustDial(t, a.srv.Addr, a.client(tv.v, "localhost", frozen))
			if st := stats(a.cache); st.TicketsFallback != 1 || st.Size != 0 {
				t.Fatalf("fallback: %d tickets, %d cached sessions; want 1 and 0", st.TicketsFallback, st.Size)
			}
			if !tlstest.MustDial(t, b.srv.Addr, b.client(tv.v, "localhost", frozen)).DidResume {
				t.Fatal("a fallback ticket did not resume on a peer that accepts the farm's tickets")
			}
			time.Sleep(1100 * time.Millisecond)
			if tlstest.MustDial(t, b.srv.Addr, b.client(tv.v, "localhost", frozen)).DidResume {
				t.Fatal("a fallback ticket resumed after its lifetime")
			}
			a.cache.SetTicketFallback(0)
			tlstest.MustDial(t, a.srv.Addr, a.client(tv.v, "localhost", tls.NewLRUClientSessionCache(1)))
			if stats(a.cache).Size != 1 {
				t.Fatal("fallback off: no cached session")
			}

			su := modeServer(t, session.Stateful, session.Config{SingleUse: true}, nil)
			su.cache.SetTicketFallback(time.Minute)
			tlstest.MustDial(t, su.srv.Addr, su.client(tv.v, "localhost", tls.NewLRUClientSessionCache(1)))
			if st := stats(su.cache); st.TicketsFallback != 0 || st.Size != 1 {
				t.Fatalf("a single-use cache fell back to tickets: %+v", st)
			}
		})
	}
}

// TestSingleUseWithoutHandshakeComplete checks that single use holds on a
// server that never calls HandshakeComplete: the config Install makes
// notes that a handshake resumed the session, and the session is retired
// when the handshake ends.
func TestSingleUseWithoutHandshakeComplete(t *testing.T) {
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
			srv := tlstest.Serve(t, "n1", cfg, nil)
			s := &farmServer{cache: cache, srv: srv, pool: pool, cfg: cfg}
			frozen := &tlstest.FrozenCache{}
			tlstest.MustDial(t, srv.Addr, s.client(tv.v, "localhost", frozen))
			if !tlstest.MustDial(t, srv.Addr, s.client(tv.v, "localhost", frozen)).DidResume {
				t.Fatal("the single-use session did not resume once")
			}
			deadline := time.Now().Add(10 * time.Second)
			for stats(cache).Retired == 0 {
				if time.Now().After(deadline) {
					t.Fatalf("the resumed session was never retired: %+v", stats(cache))
				}
				time.Sleep(20 * time.Millisecond)
			}
			if tlstest.MustDial(t, srv.Addr, s.client(tv.v, "localhost", frozen)).DidResume {
				t.Fatal("single-use session resumed twice")
			}
		})
	}
}

// TestSingleUseFoundBeforeConsumed holds one handshake between finding a
// single-use session and claiming it (in its EventGet hook, which runs in
// between), while a second handshake resumes the session and completes. The
// first must not resume it once it has been consumed: the claim it takes
// then is free again, but the session is gone.
func TestSingleUseFoundBeforeConsumed(t *testing.T) {
	t.Parallel()
	for _, tv := range versions {
		t.Run(tv.name, func(t *testing.T) {
			s := newServer(t, &session.Config{SingleUse: true})
			frozen := &tlstest.FrozenCache{}
			tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", frozen))
			var first atomic.Bool
			found, proceed := make(chan struct{}), make(chan struct{})
			s.cache.AddHook(session.EventGet, func(ev session.Event) {
				if ev.Origin == session.OriginHandshake && ev.Record.State != nil && first.CompareAndSwap(false, true) {
					close(found)
					<-proceed
				}
			})
			held := make(chan tls.ConnectionState, 1)
			go func() {
				cs, err := tlstest.Dial(s.srv.Addr, s.client(tv.v, "localhost", frozen))
				if err != nil {
					t.Error(err)
				}
				held <- cs
			}()
			<-found
			if !tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", frozen)).DidResume {
				close(proceed)
				t.Fatal("the single-use session did not resume once")
			}
			close(proceed)
			if (<-held).DidResume {
				t.Fatalf("single-use session resumed twice: by a handshake that found it before it was consumed (%+v)", stats(s.cache))
			}
		})
	}
}

// TestSingleUseEveryMode: in every mode a single-use cache accepts, a
// session resumes once. A stateless ticket cannot be retired, so New
// refuses SingleUse in Stateless mode rather than issue tickets that resume
// again and again.
func TestSingleUseEveryMode(t *testing.T) {
	t.Parallel()
	for _, mode := range []session.Mode{session.Stateful, session.Mixed, session.Stateless} {
		for _, tv := range versions {
			t.Run(mode.String()+"/"+tv.name, func(t *testing.T) {
				c, err := session.New(&session.Config{Mode: mode, SingleUse: true})
				if err != nil {
					if mode != session.Stateless {
						t.Fatalf("New refused SingleUse in %v mode: %v", mode, err)
					}
					return
				}
				c.Close()
				s := modeServer(t, mode, session.Config{SingleUse: true}, nil)
				frozen := &tlstest.FrozenCache{}
				tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", frozen))
				if !tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", frozen)).DidResume {
					t.Fatal("the single-use session did not resume once")
				}
				if tlstest.MustDial(t, s.srv.Addr, s.client(tv.v, "localhost", frozen)).DidResume {
					t.Fatalf("single-use session resumed twice in %v mode (%+v)", mode, stats(s.cache))
				}
			})
		}
	}
}
