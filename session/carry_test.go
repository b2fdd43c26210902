package session_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/metric"
	"github.com/tlsfarm/tlsfarm/session"
)

// admitFarm is a Farm that admits carried copies as admit says, and loads
// from load; it counts both.
type admitFarm struct {
	loadFunc
	admit func(session.ID, session.Record) (session.Record, bool)

	mu     sync.Mutex
	admits int
	got    session.Record
	gotid  session.ID
}

// gotID is the ID of the last copy offered.
func (f *admitFarm) gotID() session.ID {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gotid
}

func (f *admitFarm) AdmitCarried(id session.ID, r session.Record) (session.Record, bool) {
	f.mu.Lock()
	f.admits++
	f.got, f.gotid = r, id
	f.mu.Unlock()
	return f.admit(id, r)
}

func carriedStats(c *session.Cache) (issued, admitted, refused, unopenable uint64) {
	m := c.Metrics()
	v := func(result string) uint64 {
		x, _ := metric.Value(m, "tlsfarm_cache_carried_total", "result", result)
		return uint64(x)
	}
	return v("issued"), v("admitted"), v("refused"), v("unopenable")
}

// carryPair returns two servers that share ID keys and session ticket keys
// (as a farm's nodes do after RotateTicketKeys); a issues carried tickets.
func carryPair(t *testing.T) (a, b *farmServer) {
	keys := []session.IDKey{{ID: 7, Key: [32]byte{1, 2, 3}}}
	a, b = newServer(t, nil), newServer(t, nil)
	tk := [][32]byte{{9, 9, 9}}
	for _, s := range []*farmServer{a, b} {
		s.cache.SetIDKeys(keys...)
		s.cfg.SetSessionTicketKeys(tk)
	}
	if !a.cache.SetCarry(true) {
		t.Fatal("SetCarry(true) = false on a stateful cache")
	}
	return a, b
}

// TestCarriedTicketResumesElsewhere: a ticket that carries its session
// resumes at once on a server that does not hold it and whose farm admits
// the copy, without asking the farm's Load; the server that holds it
// resumes it without opening the copy.
func TestCarriedTicketResumesElsewhere(t *testing.T) {
	for _, tv := range versions {
		t.Run(tv.name, func(t *testing.T) {
			a, b := carryPair(t)
			load, loads := loadsFrom(a.cache)
			f := &admitFarm{loadFunc: load, admit: func(_ session.ID, r session.Record) (session.Record, bool) { return r, true }}
			b.cache.Join(f, time.Second)
			shared := &tlstest.SharedCache{}
			tlstest.MustDial(t, a.srv.Addr, a.client(tv.v, "localhost", shared))
			if issued, _, _, _ := carriedStats(a.cache); issued != 1 {
				t.Fatalf("carried tickets issued = %d, want 1", issued)
			}
			// On its issuer: a hit, the copy not opened.
			if cs := tlstest.MustDial(t, a.srv.Addr, a.client(tv.v, "localhost", &tlstest.SharedCache{})); cs.DidResume {
				t.Fatal("a fresh client resumed")
			}
			cs := tlstest.MustDial(t, b.srv.Addr, b.client(tv.v, "localhost", shared))
			if !cs.DidResume {
				t.Fatal("B did not resume the carried session")
			}
			if _, admitted, _, _ := carriedStats(b.cache); admitted != 1 || loads() != 0 {
				t.Fatalf("admitted = %d, loads = %d; want 1 and 0", admitted, loads())
			}
			f.mu.Lock()
			got := f.got
			f.mu.Unlock()
			if got.ServerName != "localhost" || got.Chain == 0 || len(got.State) == 0 || !got.Expires.After(time.Now()) {
				t.Fatalf("admitted record = %+v", got)
			}
			if tv.v == tls.VersionTLS13 {
				// The successor, issued on B, resumes on A from its copy?
				// A has no admitter: it loads it (here: finds nothing).
				cs = tlstest.MustDial(t, a.srv.Addr, a.client(tv.v, "localhost", shared))
				if cs.DidResume {
					t.Fatal("A resumed B's successor without a farm")
				}
			}
			_, _, _, unopen := carriedStats(a.cache)
			if _, adm, ref, _ := carriedStats(a.cache); adm+ref+unopen != 0 {
				t.Fatalf("A opened carried copies: admitted %d refused %d unopenable %d", adm, ref, unopen)
			}
		})
	}
}

// TestCarriedTicketRefused: a copy the farm does not admit, one under
// other ticket keys, and one without an admitting farm all resume by the
// ID, through Load; a copy bound to another server name resumes nowhere.
func TestCarriedTicketRefused(t *testing.T) {
	for _, tv := range versions {
		t.Run(tv.name, func(t *testing.T) {
			t.Run("refused", func(t *testing.T) {
				a, b := carryPair(t)
				load, loads := loadsFrom(a.cache)
				b.cache.Join(&admitFarm{loadFunc: load, admit: func(session.ID, session.Record) (session.Record, bool) { return session.Record{}, false }}, time.Second)
				shared := &tlstest.SharedCache{}
				tlstest.MustDial(t, a.srv.Addr, a.client(tv.v, "localhost", shared))
				if cs := tlstest.MustDial(t, b.srv.Addr, b.client(tv.v, "localhost", shared)); !cs.DidResume {
					t.Fatal("B did not resume through Load")
				}
				if _, admitted, refused, _ := carriedStats(b.cache); admitted != 0 || refused != 1 || loads() != 1 {
					t.Fatalf("admitted %d refused %d loads %d; want 0, 1, 1", admitted, refused, loads())
				}
			})
			t.Run("other keys", func(t *testing.T) {
				a, b := carryPair(t)
				b.cfg.SetSessionTicketKeys([][32]byte{{1}})
				load, loads := loadsFrom(a.cache)
				f := &admitFarm{loadFunc: load, admit: func(_ session.ID, r session.Record) (session.Record, bool) { return r, true }}
				b.cache.Join(f, time.Second)
				shared := &tlstest.SharedCache{}
				tlstest.MustDial(t, a.srv.Addr, a.client(tv.v, "localhost", shared))
				if cs := tlstest.MustDial(t, b.srv.Addr, b.client(tv.v, "localhost", shared)); !cs.DidResume {
					t.Fatal("B did not resume through Load")
				}
				if _, admitted, _, unopen := carriedStats(b.cache); admitted != 0 || unopen != 1 || loads() != 1 || f.admits != 0 {
					t.Fatalf("admitted %d unopenable %d loads %d admits %d; want 0, 1, 1, 0", admitted, unopen, loads(), f.admits)
				}
			})
			t.Run("no admitter", func(t *testing.T) {
				a, b := carryPair(t)
				load, loads := loadsFrom(a.cache)
				b.cache.Join(load, time.Second)
				shared := &tlstest.SharedCache{}
				tlstest.MustDial(t, a.srv.Addr, a.client(tv.v, "localhost", shared))
				if cs := tlstest.MustDial(t, b.srv.Addr, b.client(tv.v, "localhost", shared)); !cs.DidResume || loads() != 1 {
					t.Fatalf("resumed %t with %d loads; want true, 1", cs.DidResume, loads())
				}
			})
			t.Run("server name", func(t *testing.T) {
				a, b := carryPair(t)
				load, loads := loadsFrom(a.cache)
				f := &admitFarm{loadFunc: load, admit: func(_ session.ID, r session.Record) (session.Record, bool) { return r, true }}
				b.cache.Join(f, time.Second)
				shared := &tlstest.SharedCache{}
				tlstest.MustDial(t, a.srv.Addr, a.client(tv.v, "a.example", shared))
				cs := tlstest.MustDial(t, b.srv.Addr, b.client(tv.v, "b.example", shared))
				if cs.DidResume || f.admits != 0 || loads() != 0 {
					t.Fatalf("resumed %t, admits %d, loads %d under another name; want false, 0, 0", cs.DidResume, f.admits, loads())
				}
			})
		})
	}
}

// TestSetCarryRefused: a single-use or stateless cache issues no carried
// ticket.
func TestSetCarryRefused(t *testing.T) {
	for _, cc := range []*session.Config{{SingleUse: true}, {Mode: session.Stateless}, {Mode: session.Mixed}} {
		c, err := session.New(cc)
		if err != nil {
			t.Fatal(err)
		}
		if c.SetCarry(true) {
			t.Errorf("SetCarry(true) = true for %+v", cc)
		}
		c.Close()
	}
}

// TestCarriedAgainOnTLS12Resumption: a TLS 1.2 resumption keeps its
// session (a reissued ticket, no successor). While the session is young
// and carried tickets are on, the ticket the resuming node gives is a
// carried one again, so that the client, reconnecting at once to a third
// node that has not heard of the session (its Load finds nothing), resumes
// there from the copy. Before, the reissued ticket was a bare ID, and the
// third node waited for the farm's message.
func TestCarriedAgainOnTLS12Resumption(t *testing.T) {
	a, b := carryPair(t)
	c := newServer(t, nil)
	c.cache.SetIDKeys(session.IDKey{ID: 7, Key: [32]byte{1, 2, 3}})
	c.cfg.SetSessionTicketKeys([][32]byte{{9, 9, 9}})
	b.cache.SetCarry(true)
	admitAll := func(_ session.ID, r session.Record) (session.Record, bool) { return r, true }
	nothing := func(context.Context, session.ID) (*session.Record, error) { return nil, nil }
	b.cache.Join(&admitFarm{loadFunc: nothing, admit: admitAll}, time.Second)
	fc := &admitFarm{loadFunc: nothing, admit: admitAll}
	c.cache.Join(fc, time.Second)

	shared := &tlstest.SharedCache{}
	tlstest.MustDial(t, a.srv.Addr, a.client(tls.VersionTLS12, "localhost", shared))
	if !tlstest.MustDial(t, b.srv.Addr, b.client(tls.VersionTLS12, "localhost", shared)).DidResume {
		t.Fatal("B did not resume the carried session")
	}
	if issued, _, _, _ := carriedStats(b.cache); issued != 1 {
		t.Fatalf("B issued %d carried tickets on resuming a young TLS 1.2 session, want 1", issued)
	}
	if !tlstest.MustDial(t, c.srv.Addr, c.client(tls.VersionTLS12, "localhost", shared)).DidResume {
		t.Fatal("C did not resume the session from B's ticket")
	}
	if _, admitted, _, _ := carriedStats(c.cache); admitted != 1 {
		t.Fatalf("C admitted %d carried copies, want 1", admitted)
	}
	// The copy C holds is the session as A and B hold it: the farm's
	// broadcast of it, arriving later, is the same session again.
	ra, _ := lookup(a.cache, fc.gotID())
	rc, _ := lookup(c.cache, fc.gotID())
	if !bytes.Equal(ra.State, rc.State) {
		t.Error("the copy C admitted differs from the state A issued")
	}
}
