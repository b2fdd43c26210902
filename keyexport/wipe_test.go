package keyexport

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/ticket"
)

// watchKeyCopies records every copy of farm keys the package reports (see
// keyCopies) until the test ends, and returns a func that fails the test
// if one still holds a key, or if fewer than want copies were made.
func watchKeyCopies(t *testing.T) (check func(what string, want int)) {
	t.Helper()
	var seen []any
	keyCopies = func(v any) { seen = append(seen, v) }
	t.Cleanup(func() { keyCopies = nil })
	return func(what string, want int) {
		t.Helper()
		if len(seen) < want {
			t.Fatalf("%s: %d copies of keys seen, want at least %d", what, len(seen), want)
		}
		for i, v := range seen {
			var left int
			switch c := v.(type) {
			case []ticket.Key:
				left = len(c) - countZero(c)
			case []SetKey:
				for _, k := range c {
					if k.Key != (ticket.Key{}) {
						left++
					}
				}
			case *ticket.State:
				left = len(c.Previous) - countZero(c.Previous)
				for _, k := range []ticket.Key{c.Current, c.Next} {
					if k != (ticket.Key{}) {
						left++
					}
				}
			default:
				t.Fatalf("%s: copy %d is a %T", what, i, v)
			}
			if left > 0 {
				t.Errorf("%s: copy %d (%T) still holds %d keys", what, i, v, left)
			}
		}
		seen = nil
	}
}

func countZero(ks []ticket.Key) int {
	n := 0
	for _, k := range ks {
		if k == (ticket.Key{}) {
			n++
		}
	}
	return n
}

// TestHAProxyExportWipesKeyCopies checks that the copies of farm keys an
// HAProxy export makes (the keys in file order, for the file and for the
// runtime API), and those an Exporter's round takes from the ring, are
// zero once they have been used, as NginxTarget's are. Before, only the
// Previous array of the ring's State was wiped.
func TestHAProxyExportWipesKeyCopies(t *testing.T) {
	for _, prev := range [][]ticket.Key{nil, {testKey(30), testKey(40)}} {
		st := ticket.State{Epoch: 7, Rotated: t0, Current: testKey(10), Next: testKey(20), Previous: slices.Clone(prev)}
		set, err := newSet(st, 0, time.Hour, 2)
		if err != nil {
			t.Fatal(err)
		}
		check := watchKeyCopies(t)
		target := &HAProxyTarget{File: filepath.Join(t.TempDir(), "tls-ticket.keys")}
		if err := target.Export(context.Background(), set); err != nil {
			t.Fatal(err)
		}
		check("HAProxyTarget.Export", 1)
		if want := haproxyWant(set, 5); len(want) != 5 {
			t.Fatalf("haproxyWant gave %d keys, want 5", len(want))
		}
		check("haproxyWant", 1)
		if set.Keys[0].Key != testKey(10) {
			t.Fatal("the export wiped the caller's Set")
		}

		ring, err := ticket.NewRing(ticket.RingConfig{Keep: 2, Interval: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if err := ring.Set(st); err != nil {
			t.Fatal(err)
		}
		e, err := NewExporter(ExporterConfig{Ring: ring, Interval: time.Hour, Keep: 2,
			Targets: []Target{&HAProxyTarget{File: filepath.Join(t.TempDir(), "tls-ticket.keys")}}})
		if err != nil {
			t.Fatal(err)
		}
		e.round(context.Background())
		if s := e.Status()[0]; !s.OK || s.Epoch != 7 {
			t.Fatalf("the round did not export: %+v", s)
		}
		check("Exporter.round", 2)
	}
}

// TestNginxExportWipesKeyCopies checks that the copies of farm keys an
// nginx export makes (the keys in file order, and the previous and next
// keys picked from the Set) are zero once the files are written. Before,
// the previous and next keys picked from the Set were left behind.
func TestNginxExportWipesKeyCopies(t *testing.T) {
	for _, prev := range [][]ticket.Key{nil, {testKey(30), testKey(40)}} {
		st := ticket.State{Epoch: 7, Rotated: t0, Current: testKey(10), Next: testKey(20), Previous: slices.Clone(prev)}
		set, err := newSet(st, 0, time.Hour, 2)
		if err != nil {
			t.Fatal(err)
		}
		check := watchKeyCopies(t)
		target := &NginxTarget{Dir: privateKeyDir(t)}
		if err := target.Export(context.Background(), set); err != nil {
			t.Fatal(err)
		}
		check("NginxTarget.Export", 1)
		if set.Keys[0].Key != testKey(10) {
			t.Fatal("the export wiped the caller's Set")
		}
	}
}
