package keyexport

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
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

// TestExporterMergedKeysLast runs an Exporter over a ring that a farm
// takes through a rotation and then a merge adding three keys, and checks
// the nginx files: the farm's previous keys fill them, not the merged keys
// at the front of the farm's set.
func TestExporterMergedKeysLast(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	ring, err := ticket.NewRing(ticket.RingConfig{})
	if err != nil {
		t.Fatal(err)
	}
	e, err := NewExporter(ExporterConfig{
		Ring: ring, Interval: time.Hour, Keep: 2, Targets: []Target{&NginxTarget{Dir: dir}},
		Poll: 5 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- e.Run(ctx) }()
	defer func() { cancel(); <-done }()

	f1, f2, f3, f4 := testKey(1), testKey(2), testKey(3), testKey(4)
	m1, m2, m3 := testKey(5), testKey(6), testKey(7)
	for _, tc := range []struct {
		st   ticket.State
		want []ticket.Key // files 0 to 3
	}{
		{ticket.State{Epoch: 1, Current: f1, Next: f2}, nil},
		{ticket.State{Epoch: 2, Current: f2, Next: f3, Previous: []ticket.Key{f1}}, nil},
		{ticket.State{Epoch: 3, Current: f2, Next: f3, Previous: []ticket.Key{m1, m2, m3, f1}}, []ticket.Key{f2, f3, f1, m1}},
		{ticket.State{Epoch: 4, Current: f3, Next: f4, Previous: []ticket.Key{f2, m1, m2, m3, f1}}, []ticket.Key{f3, f4, f2, f1}},
	} {
		if err := ring.Set(tc.st); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the export", func() bool { return e.Status()[0].Epoch == tc.st.Epoch })
		for i, k := range tc.want {
			b, err := os.ReadFile(filepath.Join(dir, NginxFileName(i)))
			if err != nil {
				t.Fatal(err)
			}
			if want := NginxKey(k); !bytes.Equal(b, want[:]) {
				t.Errorf("epoch %d: %s does not hold key %v", tc.st.Epoch, NginxFileName(i), k)
			}
		}
	}
}
