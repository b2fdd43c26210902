package natsbus_test

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestPromisesExpiryAfterKVRestartedEmpty: a session past its end resumes
// on no node after the NATS server restarted empty and the nodes wrote
// their sessions back. "lifetime": n1 issues a session whose Lifetime is a
// few seconds. "chain": n2 resumes n1's session (Lifetime an hour) and
// issues its child, whose chain ends a few seconds after n1's handshake
// (MaxChainLifetime). The server restarts empty; the holder writes the
// session back, and n3, which joins then with an empty cache, resumes it
// from what was written back (the control: the write-back happened, and
// in the chain case n3 issues a grandchild, which must keep the chain's
// end). Past the end, neither the session nor the grandchild resumes on
// n1, n2 or n3, and the store no longer holds them, nor an untouched
// session n1 issued with the first, whose written-back record no
// resumption cut: a write-back must not give a session (or its record)
// more life than it had. Broadcast and store-only.
func TestPromisesExpiryAfterKVRestartedEmpty(t *testing.T) {
	t.Parallel()
	for _, chain := range []bool{false, true} {
		for _, mode := range []farm.Mode{farm.Broadcast, farm.StoreOnly} {
			name := "lifetime/"
			if chain {
				name = "chain/"
			}
			t.Run(name+mode.String(), func(t *testing.T) {
				t.Parallel()
				expiryAfterRestartEmpty(t, mode, chain)
			})
		}
	}
}

func expiryAfterRestartEmpty(t *testing.T, mode farm.Mode, chain bool) {
	const bound = 8 * time.Second
	ms, p, o, name := emptyFarm(t, 2, mode, false, func(c *session.Config) {
		if chain {
			c.MaxChainLifetime = bound
		} else {
			c.Lifetime = bound
		}
	})
	ids, cs := farmtest.Issue(t, ms[0], 2)
	id, c, holder := ids[0], cs[0], ms[0]
	uid := ids[1] // untouched: no resumption cuts its record
	for _, x := range ids {
		farmtest.Eventually(t, 5*time.Second, "the session reached the store", func() bool { return stored(ms[0], x) })
	}
	if chain {
		// The session that ends is the child n2 issues: its own
		// Lifetime is an hour, its chain's end a few seconds away.
		n2ids := farmtest.HandshakeSessions(ms[1].Cache)
		child := &tlstest.FrozenCache{}
		if !tlstest.MustDial(t, ms[1].Server.Addr, farmtest.Client(tls.VersionTLS13, handoff{c, child})).DidResume {
			t.Fatal("the session did not resume on n2")
		}
		if len(n2ids()) != 1 {
			t.Fatalf("n2 issued %d sessions resuming one", len(n2ids()))
		}
		id, c, holder = n2ids()[0], child, ms[1]
		farmtest.Eventually(t, 5*time.Second, "the child reached the store", func() bool { return stored(holder, id) })
	}
	var expires, uexpires time.Time
	for got, e := range holder.Cache.Expiries() {
		if got == id {
			expires = e
		}
	}
	for got, e := range ms[0].Cache.Expiries() {
		if got == uid {
			uexpires = e
		}
	}
	if expires.IsZero() || uexpires.IsZero() {
		t.Fatalf("%s does not hold the session it issued", holder.Name)
	}

	p.srv.RestartEmpty()
	farmtest.WaitConnected(t, ms...)
	farmtest.Eventually(t, 15*time.Second, "the sessions written back", func() bool { return stored(holder, id) && stored(ms[0], uid) })
	n3 := farmtest.Join(t, "n3", name, *o)
	farmtest.WaitConnected(t, n3)
	all := append(ms, n3)
	n3ids := farmtest.HandshakeSessions(n3.Cache)
	grandchild := &tlstest.FrozenCache{}
	if !tlstest.MustDial(t, n3.Server.Addr, farmtest.Client(tls.VersionTLS13, handoff{c, grandchild})).DidResume {
		if time.Now().After(expires) {
			t.Skipf("n3 resumed %v after the session's end: the machine is too slow for this test", time.Since(expires))
		}
		farmtest.LogStats(t, all)
		t.Fatal("the written-back session did not resume on n3 before its end")
	}
	clients := map[string]*tlstest.FrozenCache{"session": c}
	if chain {
		if len(n3ids()) != 1 {
			t.Fatalf("n3 issued %d sessions resuming one", len(n3ids()))
		}
		clients["grandchild"] = grandchild
		farmtest.Eventually(t, 5*time.Second, "the grandchild reached the store", func() bool { return stored(n3, n3ids()[0]) })
	}
	t.Logf("n3 resumed the written-back session %v before its end", time.Until(expires).Round(time.Millisecond))

	time.Sleep(time.Until(later(expires, uexpires).Add(200 * time.Millisecond))) // the promise is about time
	for _, m := range all {
		for what, c := range clients {
			if resumes(t, m, c) {
				farmtest.LogStats(t, all)
				t.Fatalf("the %s resumed on %s past its end, after NATS restarted empty", what, m.Name)
			}
		}
	}
	// The record of a session no resumption cut lives only as long as
	// the session: the written-back TTL is its life left.
	if stored(ms[0], uid) {
		t.Error("the store holds the untouched session past its end: the write-back gave its record more life")
	}
	if stored(holder, id) {
		t.Error("the store holds the session past its end")
	}
	if chain && stored(n3, n3ids()[0]) {
		t.Error("the store holds the grandchild past its chain's end")
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
