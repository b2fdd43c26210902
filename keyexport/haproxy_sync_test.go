package keyexport

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/ticket"
)

// TestHAProxySyncRealServer drives a real HAProxy through the runtime API
// as HAProxyTarget does, from the key set it started with: a routine
// rotation (one push), a jump of two rotations (two pushes), and a key set
// that shares no key with it (three). After each, HAProxy holds exactly the
// last three keys of the file the target wrote (checked by Sync itself,
// and again here), a ticket issued before a routine rotation resumes after
// it, a ticket issued under the farm's current key resumes after a restart
// of HAProxy from the file, and a ticket whose key left HAProxy's window
// does not.
func TestHAProxySyncRealServer(t *testing.T) {
	const keep = 2
	keys := map[string]ticket.Key{}
	for i, n := range []string{"H", "I", "J", "K", "L", "M", "N", "X", "Y", "Z"} {
		keys[n] = testKey(byte(10 + 7*i))
	}
	state := func(epoch uint64, cur, next string, prev ...string) *Set {
		s := ticket.State{Epoch: epoch, Current: keys[cur], Next: keys[next], Rotated: time.Now()}
		for _, p := range prev {
			s.Previous = append(s.Previous, keys[p])
		}
		set, err := newSet(s, 0, time.Hour, keep)
		if err != nil {
			t.Fatal(err)
		}
		return set
	}
	dir := privateKeyDir(t)
	keysFile := filepath.Join(dir, "tls-ticket.keys")
	if err := writeFiles([]file{{Path: keysFile, Data: haproxyFile(state(5, "J", "K", "I", "H"))}}); err != nil {
		t.Fatal(err)
	}
	hp, sock := newHAProxyServer(t, keysFile)
	hp.start()
	target := &HAProxyTarget{File: keysFile, Socket: sock}
	rt := &HAProxyRuntime{Socket: sock, ID: keysFile}
	tdir := t.TempDir()
	ticketOf := func(name string) string {
		t.Helper()
		p := filepath.Join(tdir, name+".pem")
		if sClient(t, hp.addr(), "1.2", "", p) {
			t.Fatalf("a handshake without a session resumed")
		}
		return p
	}
	resumes := func(sess string) bool { t.Helper(); return sClient(t, hp.addr(), "1.2", sess, "") }
	sync := func(set *Set, wantPushed int) {
		t.Helper()
		data := haproxyFile(set)
		if err := writeFiles([]file{{Path: keysFile, Data: data}}); err != nil {
			t.Fatal(err)
		}
		n, err := rt.Sync(context.Background(), set)
		if err != nil {
			t.Fatalf("epoch %d: %v", set.Epoch, err)
		}
		if n != wantPushed {
			t.Errorf("epoch %d: %d keys pushed, want %d", set.Epoch, n, wantPushed)
		}
		live, err := rt.Keys(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Fields(string(data))
		if !slices.Equal(live, lines[len(lines)-len(live):]) {
			t.Errorf("epoch %d: HAProxy's keys are not the last %d of the file", set.Epoch, len(live))
		}
	}

	tJ := ticketOf("J")
	sync(state(6, "K", "L", "J", "I"), 1)
	if !resumes(tJ) {
		t.Error("after a routine rotation pushed live, a ticket of the key that encrypted until it does not resume")
	}
	tK := ticketOf("K")
	sync(state(8, "M", "N", "L", "K"), 2) // epoch 7 missed
	if resumes(tK) {
		t.Error("K left HAProxy's three keys, yet its ticket resumes")
	}
	tM := ticketOf("M")
	sync(state(20, "Y", "Z", "X", "M"), 3) // no key in common with HAProxy's
	if resumes(tM) {
		t.Error("M left HAProxy's three keys, yet its ticket resumes")
	}
	tY := ticketOf("Y")
	if err := target.Export(context.Background(), state(20, "Y", "Z", "X", "M")); err != nil {
		t.Fatal(err) // in line already: nothing to push
	}
	hp.restart()
	if !resumes(tY) {
		t.Error("after a restart from the file, HAProxy does not resume a ticket of the farm's current key")
	}
}

// TestHAProxyRuntimePathWithSpace pushes keys to a real HAProxy whose
// tls-ticket-keys file has a space in its path (quoted in haproxy.cfg):
// the runtime API splits words at spaces unless they are escaped, so the
// reference was not found and every export failed. The escaping also
// keeps ';' and '\' inside the word (a ';' would have ended the command).
func TestHAProxyRuntimePathWithSpace(t *testing.T) {
	if got, want := cliWord(`/a b;c\d	e`), `/a\ b\;c\\d\	e`; got != want {
		t.Errorf("cliWord = %q, want %q", got, want)
	}
	dir := filepath.Join(privateKeyDir(t), "tls farm")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	keysFile := filepath.Join(dir, "tls-ticket.keys")
	st := ticket.State{Epoch: 3, Current: testKey(1), Next: testKey(40), Previous: []ticket.Key{testKey(80)}, Rotated: time.Now()}
	set, err := newSet(st, 0, time.Hour, 2)
	if err != nil {
		t.Fatal(err)
	}
	target := &HAProxyTarget{File: keysFile}
	if err := target.Export(context.Background(), set); err != nil {
		t.Fatal(err)
	}
	hp, sock := newHAProxyServer(t, keysFile)
	hp.start()
	next, err := st.Rotate(time.Now(), 2)
	if err != nil {
		t.Fatal(err)
	}
	set2, err := newSet(next, 0, time.Hour, 2)
	if err != nil {
		t.Fatal(err)
	}
	target.Socket = sock
	if err := target.Export(context.Background(), set2); err != nil {
		t.Fatalf("export to a HAProxy whose key file's path has a space: %v", err)
	}
}
