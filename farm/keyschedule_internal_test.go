package farm

import (
	"encoding/binary"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/ticket"
)

// parseKeySetBefore is parseKeySet as versions before the schedule read
// key sets: what an older node in the farm makes of a set this version
// writes.
func parseKeySetBefore(b []byte) (keySet, error) {
	if len(b) < stateHeaderLen {
		return keySet{}, errors.New("too short")
	}
	n := int(binary.BigEndian.Uint16(b[stateHeaderLen-2:]))
	end := stateHeaderLen + n*ticket.KeyLen
	var k keySet
	switch len(b) - end {
	case 0:
	case trailerLen:
		k.extra = int(binary.BigEndian.Uint16(b[end:]))
		if k.extra > 0 {
			k.until = binary.BigEndian.Uint64(b[end+2:])
		}
		b = b[:end]
	default:
		return keySet{}, errors.New("bad length")
	}
	st, err := ticket.ParseState(b)
	k.st = st
	return k, err
}

// TestKeySetScheduleEncoding: a key set carries its writer's Interval and
// Keep, and its merged keys, through its encoding; a schedule the
// encoding cannot hold is left out (the set is then written as before);
// an older node reads every set this version writes, and reads the
// schedule form as a set without merged keys (never keeping a key
// longer than the set says).
func TestKeySetScheduleEncoding(t *testing.T) {
	st := newState(t, 7, 3)
	for _, tc := range []struct {
		name       string
		ks         keySet
		want       keySet // after the round trip
		trailer    bool   // the encoding has a trailer
		oldExtra   int    // extra as an older node reads it
		noSchedule bool
	}{
		{name: "schedule", ks: keySet{st: st, interval: 12 * time.Hour, keep: 2}, trailer: true},
		{name: "merged, with schedule", ks: keySet{st: st, extra: 2, until: 9, interval: time.Second, keep: 1}, trailer: true},
		{name: "merged, lapsed", ks: keySet{st: st, extra: 2, until: 6, interval: time.Second, keep: 1},
			want: keySet{st: st, interval: time.Second, keep: 1}, trailer: true},
		{name: "largest schedule", ks: keySet{st: st, interval: paramsMaxMS * time.Millisecond, keep: paramsMaxKeep}, trailer: true},
		{name: "no schedule", ks: keySet{st: st}, noSchedule: true},
		{name: "merged, no schedule", ks: keySet{st: st, extra: 2, until: 9}, trailer: true, oldExtra: 2, noSchedule: true},
		{name: "interval not whole milliseconds", ks: keySet{st: st, extra: 2, until: 9, interval: 1500 * time.Microsecond, keep: 1},
			want: keySet{st: st, extra: 2, until: 9}, trailer: true, oldExtra: 2, noSchedule: true},
		{name: "keep too large", ks: keySet{st: st, interval: time.Hour, keep: paramsMaxKeep + 1},
			want: keySet{st: st}, noSchedule: true},
		{name: "interval too long", ks: keySet{st: st, interval: (paramsMaxMS + 1) * time.Millisecond, keep: 2},
			want: keySet{st: st}, noSchedule: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := tc.want
			if want.st.Epoch == 0 {
				want = tc.ks
			}
			b, err := tc.ks.bytes()
			if err != nil {
				t.Fatal(err)
			}
			if got := len(b) - (stateHeaderLen + len(st.Previous)*ticket.KeyLen); got != map[bool]int{true: trailerLen}[tc.trailer] {
				t.Fatalf("trailer of %d bytes", got)
			}
			got, err := parseKeySet(b)
			if err != nil || !reflect.DeepEqual(got, want) {
				t.Fatalf("round trip: %+v (%v), want %+v", got, err, want)
			}
			if (got.interval == 0) != tc.noSchedule {
				t.Fatalf("schedule read: %v, %d", got.interval, got.keep)
			}
			old, err := parseKeySetBefore(b)
			if err != nil || !reflect.DeepEqual(old.st, st) || old.extra != tc.oldExtra {
				t.Fatalf("an older node reads %+v (%v)", old, err)
			}
		})
	}
}

// TestAgedByItsSchedule: a set is aged by the schedule it carries, and by
// the node's own only if it carries none.
func TestAgedByItsSchedule(t *testing.T) {
	st := newState(t, 7, 2)
	now := st.Rotated.Add(2200 * time.Millisecond)
	for _, tc := range []struct {
		name      string
		ks        keySet
		interval  time.Duration // this node's
		keep      int
		wantPrev  int
		wantStale bool
	}{
		{name: "farm's interval longer", ks: keySet{st: st, interval: 10 * time.Second, keep: 2}, interval: time.Second, keep: 2, wantPrev: 2},
		{name: "farm's interval longer, keep larger", ks: keySet{st: st, interval: 10 * time.Second, keep: 2}, interval: time.Second, keep: 1, wantPrev: 2},
		{name: "farm's interval shorter", ks: keySet{st: st, interval: time.Second, keep: 2}, interval: time.Hour, keep: 5, wantPrev: 0},
		{name: "farm's keep smaller", ks: keySet{st: st, interval: time.Second, keep: 1}, interval: time.Hour, keep: 5, wantStale: true},
		{name: "no schedule: this node's", ks: keySet{st: st}, interval: time.Second, keep: 1, wantStale: true},
		{name: "no schedule, this node's longer", ks: keySet{st: st}, interval: time.Hour, keep: 1, wantPrev: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := aged(tc.ks, now, tc.interval, tc.keep)
			if !ok != tc.wantStale || (ok && len(got.st.Previous) != tc.wantPrev) {
				t.Fatalf("aged: %d previous keys, ok %v; want %d, stale %v", len(got.st.Previous), ok, tc.wantPrev, tc.wantStale)
			}
		})
	}
}

// TestMergeCarriesFarmSchedule: a merge writes the schedule of the farm's
// set (its lease holder's), not the merging node's, and keeps the merged
// keys for the farm's Keep rotations; a farm set without one takes the
// node's.
func TestMergeCarriesFarmSchedule(t *testing.T) {
	for _, tc := range []struct {
		name       string
		farm       keySet
		mine       ticket.State
		wantIv     time.Duration
		wantKeep   int
		wantUntil  uint64
		wantExtras int
	}{
		{name: "split", farm: keySet{st: newState(t, 7, 2), interval: 12 * time.Hour, keep: 3}, mine: newState(t, 7, 2),
			wantIv: 12 * time.Hour, wantKeep: 3, wantUntil: 8 + 3, wantExtras: 3},
		{name: "farm behind", farm: keySet{st: newState(t, 5, 2), interval: 12 * time.Hour, keep: 3}, mine: newState(t, 7, 6),
			wantIv: 12 * time.Hour, wantKeep: 3, wantUntil: 8 + 3, wantExtras: 3},
		{name: "farm without schedule", farm: keySet{st: newState(t, 7, 2)}, mine: newState(t, 7, 2),
			wantIv: time.Second, wantKeep: 1, wantUntil: 8 + 1, wantExtras: 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := merge(tc.farm, tc.mine, time.Second, 1)
			b, err := m.bytes()
			if err != nil {
				t.Fatal(err)
			}
			back, err := parseKeySet(b)
			if err != nil {
				t.Fatal(err)
			}
			if back.interval != tc.wantIv || back.keep != tc.wantKeep || back.until != tc.wantUntil || back.extra != tc.wantExtras {
				t.Fatalf("merged set: interval %v keep %d until %d extra %d; want %v %d %d %d",
					back.interval, back.keep, back.until, back.extra, tc.wantIv, tc.wantKeep, tc.wantUntil, tc.wantExtras)
			}
		})
	}
}
