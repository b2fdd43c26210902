package natsbus_test

import (
	"context"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
)

// TestLegacySetMemberOutlivesMaxAge: on a server without per-message TTL
// the bucket's age limit drops every key written longer ago than it. A set
// member (a revocation tombstone) lives until its session's chain ends,
// which may be later than Options.LegacyMaxAge, while the session records'
// bucket grows its limit to cover them: the tombstone must be kept as long
// as the session it revokes. Before the fix it was dropped at the limit.
func TestLegacySetMemberOutlivesMaxAge(t *testing.T) {
	t.Parallel()
	srv := startNATS(t)
	tr, err := natsbus.Open(srv.URL(""), farmtest.FarmName(t), &natsbus.Options{LegacyMaxAge: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if native, err := tr.NativeTTL(ctx); err != nil {
		t.Fatal(err)
	} else if native {
		t.Skip("the server expires keys by their own TTL")
	}
	if err := tr.SetAdd(ctx, "tomb", []byte("revoked"), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	got, err := tr.SetMembers(ctx, "tomb")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("%d members 3 s after adding one that lapses in an hour: the bucket's age limit dropped it", len(got))
	}
}
