package keyexport

import (
	"slices"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/ticket"
)

// TestMergedKeysLast checks a Set whose last previous keys were merged in
// from another key set: the farm's own previous keys keep the times of
// their place among the farm's keys, the merged keys come last with no
// encrypt times, and the fixed windows of nginx (keep previous keys) and
// HAProxy (one) hold the farm's keys.
func TestMergedKeysLast(t *testing.T) {
	h := time.Hour
	// Previous: the farm's 30 and 40, then merged 50, 60, 70.
	s := testState(9, 5)
	set, err := newSet(s, 3, h, 2)
	if err != nil {
		t.Fatal(err)
	}
	want := []SetKey{
		{Current, testKey(10), t0, t0.Add(h), t0.Add(3 * h)},
		{Next, testKey(20), t0.Add(h), t0.Add(2 * h), t0.Add(4 * h)},
		{Previous, testKey(30), t0.Add(-h), t0, t0.Add(2 * h)},
		{Previous, testKey(40), t0.Add(-2 * h), t0.Add(-h), t0.Add(h)},
		{Previous, testKey(50), time.Time{}, time.Time{}, t0.Add(2 * h)},
		{Previous, testKey(60), time.Time{}, time.Time{}, t0.Add(2 * h)},
		{Previous, testKey(70), time.Time{}, time.Time{}, t0.Add(2 * h)},
	}
	if !slices.Equal(set.Keys, want) {
		t.Errorf("keys:\n got %+v\nwant %+v", set.Keys, want)
	}
	if got, w := nginxKeys(set), []ticket.Key{testKey(10), testKey(20), testKey(30), testKey(40)}; !slices.Equal(got, w) {
		t.Errorf("nginx files: %v, want %v", got, w)
	}
	if got, w := haproxyKeys(set), []ticket.Key{testKey(30), testKey(10), testKey(20)}; !slices.Equal(got[len(got)-3:], w) {
		t.Errorf("HAProxy's last three keys: %v, want %v", got[len(got)-3:], w)
	}
	for _, n := range []int{-1, 6} {
		if _, err := newSet(s, n, h, 2); err == nil {
			t.Errorf("newSet took %d merged keys of 5 previous keys", n)
		}
	}
}
