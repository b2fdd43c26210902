package natsbus_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// TestSetMembersKeepsThoseThatLapseLast: with more members than the bound
// (5 here, in place of transport.MaxSetMembers), SetMembers returns the 5
// that lapse last, as Redis does and docs/transports.md says, whatever
// order they were written in; lapsed members and one longer than
// transport.MaxSetMemberSize (though it lapses last of all) take no place.
// Before the fix it kept the first 5 it read (the ones written first),
// after holding every member of the set. On the shared server (nats-server
// 2.9, where SetMembers purges lapsed members) and an embedded current one.
func TestSetMembersKeepsThoseThatLapseLast(t *testing.T) {
	for _, srv := range []struct {
		name string
		url  func(testing.TB) string
	}{{"shared", sharedURL}, {"embedded", embedded}} {
		t.Run(srv.name, func(t *testing.T) {
			natsbus.SetMaxSetMembers(t, 5)
			tr := open(t, srv.url(t), farmtest.FarmName(t))
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			now, err := tr.Time(ctx)
			if err != nil {
				t.Fatal(err)
			}
			const n = 40
			order := rand.Perm(n)
			slices.Sort(order[:n/2]) // half of them written in the order they lapse
			for _, i := range order {
				until := now.Add(time.Hour + time.Duration(i)*time.Minute)
				if err := tr.SetAdd(ctx, "tomb", fmt.Appendf(nil, "m%02d", i), until); err != nil {
					t.Fatal(err)
				}
			}
			for i := range 3 {
				if err := tr.SetAdd(ctx, "tomb", fmt.Appendf(nil, "lapsed%d", i), now.Add(-time.Minute)); err != nil {
					t.Fatal(err)
				}
			}
			big := make([]byte, transport.MaxSetMemberSize+1)
			if err := tr.SetAdd(ctx, "tomb", big, now.Add(24*time.Hour)); err != nil {
				t.Fatal(err)
			}
			got, err := tr.SetMembers(ctx, "tomb")
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, m := range got {
				names = append(names, string(m))
			}
			slices.Sort(names)
			want := []string{"m35", "m36", "m37", "m38", "m39"}
			if !slices.Equal(names, want) {
				t.Fatalf("SetMembers = %q, want the 5 that lapse last %q", names, want)
			}
		})
	}
}
