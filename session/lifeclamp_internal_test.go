package session

import (
	"math"
	"testing"
	"time"
)

// TestInsertBoundsLifeByIssue: Insert keeps a session no longer than the
// issue time its ID carries plus the cache's Lifetime (and a millisecond
// for the ID's precision), and counts the records it cuts. An issue time
// later than now counts as now, uncounted (the minter's clock is ahead), and
// so does one before 1970, which only an ID minted before IDs carried their
// issue time decodes to; a far-future one (such an ID, the other half of
// the time) also counts as now.
func TestInsertBoundsLifeByIssue(t *testing.T) {
	now := time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
	const life = time.Hour
	for _, tc := range []struct {
		name    string
		issued  time.Time
		expires time.Time
		want    time.Time // zero: refused as expired
		clamped uint64
	}{
		{name: "within its life", issued: now.Add(-time.Minute), expires: now.Add(life - time.Minute), want: now.Add(life - time.Minute)},
		{name: "issued now, a longer life", issued: now, expires: now.Add(3 * life), want: now.Add(life + time.Millisecond), clamped: 1},
		{name: "issued long ago, replayed with a later expiry", issued: now.Add(-2 * life), expires: now.Add(life), clamped: 1},
		{name: "issued a little ago, a longer life", issued: now.Add(-10 * time.Minute), expires: now.Add(life), want: now.Add(50*time.Minute + time.Millisecond), clamped: 1},
		{name: "issued ahead of now", issued: now.Add(3 * time.Second), expires: now.Add(3*time.Second + life), want: now.Add(life + time.Millisecond)},
		{name: "issue time before 1970 (an older ID)", issued: time.UnixMilli(-123456789), expires: now.Add(life / 2), want: now.Add(life / 2)},
		{name: "issue time before 1970, a longer life", issued: time.UnixMilli(-123456789), expires: now.Add(2 * life), want: now.Add(life + time.Millisecond)},
		{name: "issue time far ahead (an older ID)", issued: time.UnixMilli(math.MaxInt64 / 3), expires: now.Add(2 * life), want: now.Add(life + time.Millisecond)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(&Config{Lifetime: life, SweepInterval: -1, Now: func() time.Time { return now }})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			id := c.keys.Load().newID(tc.issued)
			err = c.Insert(id, Record{State: []byte("state"), Expires: tc.expires, ChainStart: now}, OriginPeer)
			if tc.want.IsZero() {
				if err != errExpired {
					t.Fatalf("Insert = %v, want %v", err, errExpired)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				var got time.Time
				for i, r := range c.Snapshot(-1) {
					if i == id {
						got = r.Expires
					}
				}
				if !got.Equal(tc.want) {
					t.Fatalf("expires %v, want %v", got, tc.want)
				}
			}
			if got := c.ctr.lifeClamped.Load(); got != tc.clamped {
				t.Errorf("clamped %d, want %d", got, tc.clamped)
			}
		})
	}
}
