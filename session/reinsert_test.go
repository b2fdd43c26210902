package session_test

import (
	"crypto/tls"
	"errors"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestReinsertKeepsCut inserts a session, cuts it, and inserts its whole
// record again (a peer's copy written before the cut): the session keeps
// the cut; once the cut has passed, the copy is refused as expired. A
// record with another state under the ID replaces it whole.
func TestReinsertKeepsCut(t *testing.T) {
	clk := newClock()
	c, err := session.New(&session.Config{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	id := c.NewID()
	whole := session.Record{State: []byte("s"), Expires: clk.Now().Add(time.Hour)}
	if err := c.Insert(id, whole, session.OriginPeer); err != nil {
		t.Fatal(err)
	}
	cut := clk.Now().Add(10 * time.Second)
	if _, ok := c.Cut(id, cut); !ok {
		t.Fatal("Cut did not find the session")
	}
	var rec recorder
	c.AddHook(session.EventNew, rec.hook)
	if err := c.Insert(id, whole, session.OriginPeer); err != nil {
		t.Fatal(err)
	}
	if r, ok := lookup(c, id); !ok || !r.Expires.Equal(cut) {
		t.Errorf("after a whole copy's insert, the session expires at %v (cached: %t), want the cut, %v", r.Expires, ok, cut)
	}
	if evs := rec.take(); len(evs) != 1 || !evs[0].Record.Expires.Equal(cut) {
		var got []time.Time
		for _, ev := range evs {
			got = append(got, ev.Record.Expires)
		}
		t.Errorf("EventNew records expire at %v, want one at the cut, %v", got, cut)
	}
	clk.Advance(11 * time.Second)
	if err := c.Insert(id, whole, session.OriginPeer); !errors.Is(err, session.ErrExpired) {
		t.Errorf("a whole copy's insert after the cut passed: err = %v, want ErrExpired", err)
	}
	if _, ok := c.GetBuffer(id, nil); ok {
		t.Error("a session cut to a time now past was found")
	}
	// Another session under the ID replaces it whole.
	other := session.Record{State: []byte("t"), Expires: clk.Now().Add(time.Hour)}
	if err := c.Insert(id, other, session.OriginPeer); err != nil {
		t.Fatal(err)
	}
	if r, ok := lookup(c, id); !ok || !r.Expires.Equal(other.Expires) {
		t.Errorf("another state under the ID expires at %v (cached: %t), want %v", r.Expires, ok, other.Expires)
	}
}

// TestReinsertKeepsResumeGrace resumes a TLS 1.3 session, which cuts it to
// its resumption grace, inserts the whole record it was issued with again
// (a peer's or the store's late copy), and offers it after the grace: it
// does not resume.
func TestReinsertKeepsResumeGrace(t *testing.T) {
	clk := newClock()
	s := newServer(t, &session.Config{Now: clk.Now})
	var rec recorder
	remove := s.cache.AddHook(session.EventNew, rec.hook)
	frozen := &tlstest.FrozenCache{}
	tlstest.MustDial(t, s.srv.Addr, s.client(tls.VersionTLS13, "localhost", frozen))
	evs := rec.take()
	if len(evs) != 1 {
		t.Fatalf("%d new sessions, want 1", len(evs))
	}
	first := evs[0]
	if !tlstest.MustDial(t, s.srv.Addr, s.client(tls.VersionTLS13, "localhost", frozen)).DidResume {
		t.Fatal("did not resume")
	}
	remove()
	grace := s.cache.Config().ResumeGrace
	if r, ok := lookup(s.cache, first.ID); !ok || r.Expires.After(clk.Now().Add(grace)) {
		t.Fatalf("the resumed session expires at %v (cached: %t), want within its grace", r.Expires, ok)
	}
	if err := s.cache.Insert(first.ID, first.Record, session.OriginPeer); err != nil {
		t.Fatal(err)
	}
	clk.Advance(grace + time.Second)
	if tlstest.MustDial(t, s.srv.Addr, s.client(tls.VersionTLS13, "localhost", frozen)).DidResume {
		t.Error("a session resumed after its grace: a late copy's insert undid the cut")
	}
}
