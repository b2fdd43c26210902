package natsbus

import (
	"encoding/binary"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// TestLastLapsingBound: offered 20000 members in random order, lastLapsing
// never holds more than its limit (100) and ends with the 100 that lapse
// last; each kept member is a copy, not the buffer it was offered in.
func TestLastLapsingBound(t *testing.T) {
	const n, limit = 20000, 100
	l := lastLapsing{limit: limit}
	buf := make([]byte, transport.MaxSetMemberSize)
	for _, i := range rand.Perm(n) {
		binary.BigEndian.PutUint64(buf, uint64(i))
		l.add(uint64(1000+i), buf[:8])
		if len(l.h) > limit || cap(l.h) > 2*limit {
			t.Fatalf("after %d members: holds %d (capacity %d), limit %d", i, len(l.h), cap(l.h), limit)
		}
	}
	var got []int
	for _, m := range l.members() {
		got = append(got, int(binary.BigEndian.Uint64(m)))
	}
	slices.Sort(got)
	for j, v := range got {
		if v != n-limit+j {
			t.Fatalf("kept %v..., want %d to %d", got[:min(5, len(got))], n-limit, n-1)
		}
	}
	if len(got) != limit {
		t.Fatalf("kept %d, want %d", len(got), limit)
	}
}
