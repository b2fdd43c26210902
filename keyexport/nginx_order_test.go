package keyexport

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/ticket"
)

// TestNginxRotationKeepsKeysInUseBetweenRenames exports a routine rotation
// to an nginx target and looks at the directory after each rename: an
// nginx that (re)loads its files at any of those moments must hold the key
// that encrypted until the rotation (lagging servers still encrypt with
// it, and it issued every ticket of the last interval), the key that
// encrypts from it and the previous keys the farm keeps. A real nginx,
// started on each of those states, resumes a TLS 1.2 ticket issued under
// each of the two keys. Before, the files were renamed in their order:
// ticket-0.key took the new current key, which ticket-1.key still held,
// and until the third rename no file held the old current key, so an
// nginx reloaded then refused every ticket of the last interval.
func TestNginxRotationKeepsKeysInUseBetweenRenames(t *testing.T) {
	const keep = 2
	h, i, j, k, l := testKey(40), testKey(50), testKey(60), testKey(70), testKey(80)
	now := time.Now()
	before := ticket.State{Epoch: 5, Current: j, Next: k, Previous: []ticket.Key{i, h}, Rotated: now.Add(-time.Hour)}
	after, err := before.Rotate(now, keep)
	if err != nil {
		t.Fatal(err)
	}
	after.Next = l
	dir := privateKeyDir(t)
	target := &NginxTarget{Dir: dir}
	export := func(s ticket.State) {
		t.Helper()
		set, err := newSet(s, 0, time.Hour, keep)
		if err != nil {
			t.Fatal(err)
		}
		if err := target.Export(context.Background(), set); err != nil {
			t.Fatal(err)
		}
	}
	files := func() [][]byte {
		var out [][]byte
		for n := range NginxFileCount(keep) {
			b, err := os.ReadFile(filepath.Join(dir, NginxFileName(n)))
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, b)
		}
		return out
	}
	export(before)
	var states [][][]byte
	afterRename = func(path string) {
		if filepath.Dir(path) == dir { // only this test's writes (none runs in parallel)
			states = append(states, files())
		}
	}
	t.Cleanup(func() { afterRename = nil })
	export(after)
	afterRename = nil
	if len(states) != NginxFileCount(keep) {
		t.Fatalf("%d renames, want %d", len(states), NginxFileCount(keep))
	}

	names := map[ticket.Key]string{h: "H (dropped)", i: "I (previous)", j: "J (encrypted until the rotation)", k: "K (encrypts from it)", l: "L (staged)"}
	for n, st := range states {
		for _, need := range []ticket.Key{j, k, i} {
			want := NginxKey(need)
			found := false
			for _, b := range st {
				found = found || bytes.Equal(b, want[:])
			}
			if !found {
				t.Errorf("after rename %d, no file holds %s", n+1, names[need])
			}
		}
	}

	// The same states, read by a real nginx.
	ng := newNginxServer(t, dir, keep)
	tdir := t.TempDir()
	sessJ, sessK := filepath.Join(tdir, "j.pem"), filepath.Join(tdir, "k.pem")
	final := files()
	write := func(st [][]byte) {
		t.Helper()
		for n, b := range st {
			if err := os.WriteFile(filepath.Join(dir, NginxFileName(n)), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	export(before)
	ng.start()
	sClient(t, ng.addr(), "1.2", "", sessJ) // a ticket under J
	if !sClient(t, ng.addr(), "1.2", sessJ, "") {
		t.Fatal("nginx does not resume its own ticket")
	}
	write(final)
	ng.restart()
	sClient(t, ng.addr(), "1.2", "", sessK) // a ticket under K
	if !sClient(t, ng.addr(), "1.2", sessJ, "") {
		t.Fatal("after the rotation, nginx does not resume a ticket of the key that encrypted until it")
	}
	for n, st := range states {
		write(st)
		ng.restart()
		if !sClient(t, ng.addr(), "1.2", sessJ, "") {
			t.Errorf("nginx started after rename %d does not resume a ticket under %s", n+1, names[j])
		}
		if !sClient(t, ng.addr(), "1.2", sessK, "") {
			t.Errorf("nginx started after rename %d does not resume a ticket under %s", n+1, names[k])
		}
	}
}
