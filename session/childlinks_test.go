package session_test

import (
	"crypto/tls"
	"testing"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestChildLinksBoundedWithoutGrace: without a grace cut (ResumeGrace < 0)
// a parent's link to its live child lasts the child's Lifetime; a client
// that resumes its latest ticket again and again makes a new parent each
// time, and the links stay within the cache's Capacity.
func TestChildLinksBoundedWithoutGrace(t *testing.T) {
	t.Parallel()
	const capacity = 8
	s := newServer(t, &session.Config{ResumeGrace: -1, Capacity: capacity, Buckets: 1})
	ccfg := s.client(tls.VersionTLS13, "localhost", tls.NewLRUClientSessionCache(1))
	tlstest.MustDial(t, s.srv.Addr, ccfg)
	const n = 5 * capacity
	for i := range n {
		if !tlstest.MustDial(t, s.srv.Addr, ccfg).DidResume {
			t.Fatalf("resumption %d did not resume", i+1)
		}
	}
	if got := session.ChildLinks(s.cache); got > capacity {
		t.Fatalf("%d resumptions left %d child links, more than the Capacity %d", n, got, capacity)
	}
	if st := stats(s.cache); st.Size > capacity {
		t.Fatalf("the cache holds %d sessions, more than its Capacity %d", st.Size, capacity)
	}
}
