package session_test

import (
	"crypto/tls"
	"slices"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/metric"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestUnparsableStateIsAMiss looks up a session whose state does not parse,
// by Get, GetBuffer and a TLS handshake that offers its ID: Get and the
// handshake, which parse it, count a miss and fire EventGet without a
// record, as for a session not found; GetBuffer, which does not, a hit.
func TestUnparsableStateIsAMiss(t *testing.T) {
	s := newServer(t, nil)
	// A client session state to resume with, whose ticket is then
	// replaced by the ID of the unparsable session.
	frozen := &tlstest.FrozenCache{}
	tlstest.MustDial(t, s.srv.Addr, s.client(tls.VersionTLS13, "localhost", frozen))
	held, _ := frozen.Get("")
	_, clientState, err := held.ResumptionState()
	if err != nil {
		t.Fatal(err)
	}

	id := s.cache.NewID()
	if err := s.cache.Insert(id, session.Record{State: []byte("not a session state"), ServerName: "localhost",
		Expires: time.Now().Add(time.Hour)}, session.OriginAPI); err != nil {
		t.Fatal(err)
	}
	var rec recorder
	s.cache.AddHook(session.EventGet, rec.hook)
	before := stats(s.cache)
	parseErrors := func() float64 {
		v, _ := metric.Value(s.cache.Metrics(), "tlsfarm_cache_refusals_total", "reason", "parse_error")
		return v
	}
	pe := parseErrors()

	if _, ok := s.cache.Get(id); ok {
		t.Fatal("Get returned a session that does not parse")
	}
	offer, err := tls.NewResumptionState(id[:], clientState)
	if err != nil {
		t.Fatal(err)
	}
	oc := &offerCache{offer: offer}
	if tlstest.MustDial(t, s.srv.Addr, s.client(tls.VersionTLS13, "localhost", oc)).DidResume {
		t.Fatal("a handshake resumed a session that does not parse")
	}
	if n, ok := s.cache.GetBuffer(id, nil); !ok || n != len("not a session state") {
		t.Fatalf("GetBuffer = %d, %t; want the state's length, true", n, ok)
	}

	want := []string{"get/api/found=false", "get/handshake/found=false", "get/api/found=true"}
	if got := summary(rec.take()); !slices.Equal(got, want) {
		t.Errorf("events = %v, want %v", got, want)
	}
	st := stats(s.cache)
	if hits, misses := st.Hits-before.Hits, st.Misses-before.Misses; hits != 1 || misses != 2 {
		t.Errorf("lookups counted %d hits, %d misses; want 1 (GetBuffer), 2 (Get, the handshake)", hits, misses)
	}
	if got := parseErrors() - pe; got != 2 {
		t.Errorf("parse errors counted: %v, want 2", got)
	}
}
