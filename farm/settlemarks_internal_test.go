package farm

import (
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// TestUnsettledFollowsMarks: the retirements and cuts a held-only re-send
// adds (unsettled) are those whose store write was not settled before the
// time asked: none settled yet, all; after a batch settled, those after it
// (and, asked from before it, all); items read back at a restart count as
// settled long ago; past the marks kept, all that Node.sent keeps.
func TestUnsettledFollowsMarks(t *testing.T) {
	cache, err := session.New(&session.Config{SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	now := time.Unix(1_000_000, 0)
	n := &Node{cfg: Config{Cache: cache, Records: nopRecords{}, Now: func() time.Time { return now }}, sent: newSentRing(1024)}
	push := func(k int) []item {
		its := make([]item, k)
		for i := range its {
			its[i] = item{id: cache.NewID(), op: opRetire}
			its[i].sent = n.keepSent(its[i])
		}
		return its
	}
	ids := func(ss []sentItem) map[session.ID]bool {
		m := make(map[session.ID]bool)
		for _, s := range ss {
			m[s.id] = true
		}
		return m
	}
	check := func(what string, since time.Time, want ...[]item) {
		t.Helper()
		got := ids(n.unsettled(since, now))
		k := 0
		for _, its := range want {
			for _, it := range its {
				k++
				if !got[it.id] {
					t.Errorf("%s: item %d not among the unsettled", what, it.sent)
				}
			}
		}
		if len(got) != k {
			t.Errorf("%s: %d unsettled, want %d", what, len(got), k)
		}
	}

	restored := push(3)
	n.settled.mark(n.sent.count(), time.Time{}) // as readSent does
	a := push(2)
	check("nothing written since the restart", now, a)
	n.settleStore(a, now)
	b := push(2)
	now = now.Add(time.Second)
	check("a settled before the time asked", now, b)
	check("a settled after the time asked", now.Add(-2*time.Second), a, b)
	n.settleStore(b[:1], now)
	check("b's first settled at the time asked", now, b)
	check("b's first settled before the time asked", now.Add(time.Nanosecond), b[1:])

	// More batches than marks kept: asked from before them all, all that
	// the ring keeps, the restored items too.
	var more []item
	for range settleMarkCount {
		now = now.Add(time.Millisecond)
		its := push(1)
		more = append(more, its...)
		n.settleStore(its, now)
	}
	check("past the marks kept", now.Add(-time.Hour), restored, a, b, more)
}
