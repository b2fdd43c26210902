package session_test

import (
	"errors"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// farFuture is a time beyond what an int64 of Unix nanoseconds holds (year
// 2514): time.Time.UnixNano wraps it around to a negative number.
var farFuture = time.Unix(1<<34, 0)

// TestFarFutureTimes: a time after 2262, where Unix nanoseconds wrap
// around, means "later than any bound" to Insert, Cut and RemoveChain, as it
// does to the ChainStart of Insert. It used to wrap to a time before 1970:
// an Insert that let the cache bound the expiry was refused as already
// expired, a Cut to it expired the session at once, and a revocation until
// it left no tombstone, so that the revoked chain could come back.
func TestFarFutureTimes(t *testing.T) {
	if farFuture.UnixNano() >= 0 {
		t.Fatalf("farFuture does not wrap around (%d): the test tests nothing", farFuture.UnixNano())
	}
	c := newCache(t, nil)

	id := c.NewID()
	r := record(16, 1, 0)
	r.Expires = farFuture
	if err := c.Insert(id, r, session.OriginAPI); err != nil {
		t.Fatalf("Insert with an expiry in 2514 = %v, want it taken (bounded by Lifetime)", err)
	}
	got, ok := lookup(c, id)
	if !ok {
		t.Fatal("the session inserted with an expiry in 2514 is not there")
	}
	if d := time.Until(got.Expires); d <= 0 || d > 2*time.Hour+time.Second {
		t.Fatalf("expiry %v from now, want the Lifetime (2h)", d)
	}

	if _, ok := c.Cut(id, farFuture); !ok {
		t.Fatal("Cut: session not held")
	}
	if _, ok := lookup(c, id); !ok {
		t.Fatal("Cut to 2514 (later than the session's expiry) expired the session")
	}

	c.RemoveChain(got.Chain, farFuture, session.OriginPeer)
	if _, ok := lookup(c, id); ok {
		t.Fatal("RemoveChain left the session")
	}
	if err := c.Insert(id, got, session.OriginPeer); !errors.Is(err, session.ErrRevoked) {
		t.Fatalf("Insert of a session of a chain revoked until 2514 = %v, want %v", err, session.ErrRevoked)
	}
}
