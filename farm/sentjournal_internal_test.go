package farm

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// sentIDs returns the IDs of what n's ring keeps live, oldest first.
func sentIDs(n *Node) []session.ID {
	var ids []session.ID
	for _, it := range n.sent.live(n.cfg.Now()) {
		ids = append(ids, it.id)
	}
	return ids
}

func sameIDs(a, b []session.ID) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestSentJournal: what a node keeps between two writes of the sent file
// is appended to the journal by each sync (sealed: no ID in clear, mode
// 0600), nothing when nothing is new; the next node reads the sent file
// and then the journal back, in order. Once the journal would hold more
// records than the ring has slots, or the ring overran the last sync, a
// sync rewrites the sent file and removes the journal; so does Close's
// save. A node that reads a journal rewrites the sent file at its first
// sync.
func TestSentJournal(t *testing.T) {
	cache, now, t0 := fileTestCache(t, &session.Config{Lifetime: time.Hour})
	file := filepath.Join(t.TempDir(), "revocations")
	journal := file + sentFileSuffix + sentJournalSuffix
	n1 := sentNode(t, "sj", file, cache, now, 4)
	exp := t0.Add(time.Hour)
	until := t0.Add(30 * time.Second)
	ids := make([]session.ID, 12)
	for i := range ids {
		ids[i] = lifeID(i + 1)
	}
	n1.sent.push(ids[0], opRetire, time.Time{}, exp)
	n1.syncSent() // no sent file yet: the journal names none
	if _, err := os.Stat(file + sentFileSuffix); !os.IsNotExist(err) {
		t.Fatalf("the first sync wrote the sent file: %v", err)
	}
	n1.sent.push(ids[1], opCut, until, exp)
	n1.sent.push(ids[2], opRetire, time.Time{}, exp)
	n1.syncSent()
	st1, err := os.Stat(journal)
	if err != nil {
		t.Fatal(err)
	}
	if st1.Mode().Perm() != 0o600 {
		t.Fatalf("journal mode %v, want 0600", st1.Mode().Perm())
	}
	raw, _ := os.ReadFile(journal)
	for _, id := range ids {
		if bytes.Contains(raw, id[:]) {
			t.Fatal("a session ID in clear in the journal")
		}
	}
	n1.syncSent() // nothing new: nothing written
	if st2, _ := os.Stat(journal); st2.Size() != st1.Size() {
		t.Fatal("a sync with nothing new wrote to the journal")
	}
	read := func(size int) *Node {
		n := sentNode(t, "sj", file, cache, now, size)
		n.readSent()
		return n
	}
	n2 := read(4)
	if got := sentIDs(n2); !sameIDs(got, ids[:3]) {
		t.Fatalf("read back %d items from the journal, not the 3 synced in order", len(got))
	}
	if it := n2.sent.live(t0)[1]; it.op != opCut || it.until != until.UnixNano() || it.expires != exp.UnixNano() {
		t.Fatal("the cut came back changed")
	}
	// One more fills the journal to the ring's size; the next sync would
	// pass it: the sent file is rewritten, the journal goes.
	n1.sent.push(ids[3], opRetire, time.Time{}, exp)
	n1.syncSent()
	n1.sent.push(ids[4], opRetire, time.Time{}, exp)
	n1.syncSent()
	if _, err := os.Stat(journal); !os.IsNotExist(err) {
		t.Fatalf("the journal outgrew the ring and is still there: %v", err)
	}
	if got := sentIDs(read(4)); !sameIDs(got, ids[1:5]) {
		t.Fatalf("after the rewrite: %d items, not the ring's last 4", len(got))
	}
	// Appends extend the rewritten file; a smaller ring keeps the last.
	n1.sent.push(ids[5], opRetire, time.Time{}, exp)
	n1.syncSent()
	if got := sentIDs(read(4)); !sameIDs(got, ids[2:6]) {
		t.Fatalf("sent file and journal: %d items, not the last 4", len(got))
	}
	if got := sentIDs(read(2)); !sameIDs(got, ids[4:6]) {
		t.Fatalf("a ring of 2: %d items, not the last 2", len(got))
	}
	// More than the ring holds since the last sync: a rewrite.
	for _, id := range ids[6:11] {
		n1.sent.push(id, opRetire, time.Time{}, exp)
	}
	n1.syncSent()
	if _, err := os.Stat(journal); !os.IsNotExist(err) {
		t.Fatalf("the ring overran the last sync, and the journal is still there: %v", err)
	}
	if got := sentIDs(read(4)); !sameIDs(got, ids[7:11]) {
		t.Fatalf("after the overrun: %d items, not the ring's last 4", len(got))
	}
	// Close's save leaves the sent file alone.
	n1.sent.push(ids[11], opRetire, time.Time{}, exp)
	n1.syncSent()
	if _, err := os.Stat(journal); err != nil {
		t.Fatal(err)
	}
	n1.saveSent()
	if _, err := os.Stat(journal); !os.IsNotExist(err) {
		t.Fatalf("Close's save left the journal: %v", err)
	}
	if got := sentIDs(read(4)); !sameIDs(got, ids[8:12]) {
		t.Fatalf("after Close's save: %d items, not the ring's last 4", len(got))
	}
	// A node that read a journal rewrites the sent file at its first
	// sync, even with nothing new.
	n1.sent.push(ids[0], opRetire, time.Time{}, exp)
	n1.syncSent()
	n3 := read(4)
	n3.syncSent()
	if _, err := os.Stat(journal); !os.IsNotExist(err) {
		t.Fatalf("the first sync after reading a journal did not fold it in: %v", err)
	}
	if got := sentIDs(read(4)); !sameIDs(got, append(ids[9:12:12], ids[0])) {
		t.Fatalf("after the fold: %d items, not the ring's last 4", len(got))
	}
	// Once all expired, a rewrite removes both files.
	n3.sent.push(ids[1], opRetire, time.Time{}, exp)
	n3.syncSent()
	now.Store(t0.Add(2 * time.Hour).UnixNano())
	n3.saveSent()
	for _, p := range []string{file + sentFileSuffix, journal} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Fatalf("%s is still there with nothing live: %v", filepath.Base(p), err)
		}
	}
}

// TestSentJournalDamaged: a journal cut short within its last frame (a
// power loss during an append) gives back the frames before it, logged
// without an ID; one whose first frame names another sent file (a crash
// between a rewrite of the sent file and the journal's removal: the sent
// file holds its items), or of an unknown version, is ignored, the sent
// file read as before; a frame of a later version is skipped, and so is
// a record of an unknown kind.
func TestSentJournalDamaged(t *testing.T) {
	cache, now, t0 := fileTestCache(t, &session.Config{Lifetime: time.Hour})
	exp := t0.Add(time.Hour)
	setup := func(t *testing.T) (*Node, string) {
		file := filepath.Join(t.TempDir(), "rev")
		n := sentNode(t, "sjd", file, cache, now, 8)
		n.sent.push(lifeID(1), opRetire, time.Time{}, exp)
		n.saveSent()
		n.sent.push(lifeID(2), opRetire, time.Time{}, exp)
		n.syncSent()
		n.sent.push(lifeID(3), opRetire, time.Time{}, exp)
		n.syncSent()
		return n, file
	}
	read := func(t *testing.T, file string) (*Node, string) {
		var logs bytes.Buffer
		n := sentNode(t, "sjd", file, cache, now, 8)
		n.log = slog.New(slog.NewTextHandler(&logs, nil))
		n.readSent()
		return n, logs.String()
	}
	ids := func(k ...int) []session.ID {
		var out []session.ID
		for _, i := range k {
			out = append(out, lifeID(i))
		}
		return out
	}
	t.Run("torn", func(t *testing.T) {
		n, file := setup(t)
		jp := n.lf.sentPath + sentJournalSuffix
		whole, _ := os.ReadFile(jp)
		st, _ := os.Stat(jp)
		for _, cut := range []int64{1, 20} {
			if err := os.Truncate(jp, st.Size()-cut); err != nil {
				t.Fatal(err)
			}
			m, logged := read(t, file)
			if got := sentIDs(m); !sameIDs(got, ids(1, 2)) {
				t.Fatalf("cut by %d: read %d items, want the 2 before the torn frame", cut, len(got))
			}
			if !strings.Contains(logged, "partial write") {
				t.Fatalf("cut by %d: logged %q", cut, logged)
			}
			for _, i := range []int{1, 2, 3} {
				id := lifeID(i)
				if strings.Contains(logged, string(id[:])) {
					t.Fatal("an ID in the log")
				}
			}
		}
		// A frame whose bytes changed does not open: it and what
		// follows are dropped.
		raw := bytes.Clone(whole)
		raw[len(raw)-5] ^= 1
		os.WriteFile(jp, raw, 0o600)
		if m, logged := read(t, file); !sameIDs(sentIDs(m), ids(1, 2)) || !strings.Contains(logged, "does not open") {
			t.Fatalf("a damaged frame: read %d items, logged %q", len(sentIDs(m)), logged)
		}
	})
	t.Run("stale", func(t *testing.T) {
		n, file := setup(t)
		jp := n.lf.sentPath + sentJournalSuffix
		old, _ := os.ReadFile(jp)
		n.saveSent() // the sent file now holds 1-3; the journal goes
		if err := os.WriteFile(jp, old, 0o600); err != nil {
			t.Fatal(err)
		}
		m, _ := read(t, file)
		if got := sentIDs(m); !sameIDs(got, ids(1, 2, 3)) {
			t.Fatalf("a stale journal: read %d items, want the sent file's 3 and no more", len(got))
		}
	})
	t.Run("versions", func(t *testing.T) {
		n, file := setup(t)
		jp := n.lf.sentPath + sentJournalSuffix
		// A frame of a later version, and one with a record of an
		// unknown kind, appended by hand.
		later := n.appendFrame(nil, []byte{sentFileVersion + 1, 1, 2, 3}, sentJournalContext)
		body := encodeSentFile([]sentItem{{id: lifeID(4), op: opRetire, expires: exp.UnixNano()}, {id: lifeID(5), op: opRetire, expires: exp.UnixNano()}})
		body[1] = 9
		unknownKind := n.appendFrame(nil, body, sentJournalContext)
		f, err := os.OpenFile(jp, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.Write(append(later, unknownKind...))
		f.Close()
		m, logged := read(t, file)
		if got := sentIDs(m); !sameIDs(got, ids(1, 2, 3, 5)) {
			t.Fatalf("read %d items, want 4 (a later frame and an unknown kind skipped); logged %q", len(got), logged)
		}
		// A journal of another version is ignored whole.
		raw, _ := os.ReadFile(jp)
		head := n.appendFrame(nil, append([]byte{sentJournalVersion + 1}, n.lf.sentHash[:]...), sentJournalContext)
		rest := raw[4+int(uint32(raw[0])<<24|uint32(raw[1])<<16|uint32(raw[2])<<8|uint32(raw[3])):]
		os.WriteFile(jp, append(head, rest...), 0o600)
		m, logged = read(t, file)
		if got := sentIDs(m); !sameIDs(got, ids(1)) || !strings.Contains(logged, "unknown version") {
			t.Fatalf("a journal of another version: read %d items, want the sent file's 1; logged %q", len(got), logged)
		}
	})
}

// TestSentReachesDisk: with the lifecycle saver running, as Join starts
// it, what keepSent keeps is readable by the next node within about
// lifeSaveEvery, without Close (the journal, not the sent file).
func TestSentReachesDisk(t *testing.T) {
	cache, now, _ := fileTestCache(t, &session.Config{Lifetime: time.Hour})
	file := filepath.Join(t.TempDir(), "revocations")
	n := sentNode(t, "srd", file, cache, now, 64)
	if err := cache.SetIDKeys(n.keys.ids...); err != nil {
		t.Fatal(err)
	}
	n.lf.dirty, n.lf.sentDirty = make(chan struct{}, 1), make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(context.Background())
	n.wg.Add(1)
	go n.lifeSaver(ctx)
	defer func() { cancel(); n.wg.Wait() }()
	var want []session.ID
	for round := range 3 {
		kept := time.Now()
		for range 5 {
			id := cache.NewID()
			want = append(want, id)
			n.keepSent(item{id: id, op: opRetire})
		}
		var got []session.ID
		for {
			m := sentNode(t, "srd", file, cache, now, 64)
			m.readSent()
			if got = sentIDs(m); sameIDs(got, want) {
				break
			}
			if time.Since(kept) > 3*lifeSaveEvery {
				t.Fatalf("round %d: after %v the next node reads %d of the %d items kept", round, time.Since(kept).Round(time.Millisecond), len(got), len(want))
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("round %d: on disk after %v", round, time.Since(kept).Round(time.Millisecond))
	}
}

// TestSentRingSince: since gives the items added after a count, oldest
// first, while the ring still holds them all, wrapped or not.
func TestSentRingSince(t *testing.T) {
	now := time.Now()
	r := newSentRing(4)
	check := func(seq uint64, want []int, wantOK bool) {
		t.Helper()
		its, at, ok := r.since(seq)
		if ok != wantOK || at != r.count() {
			t.Fatalf("since(%d): ok %v at %d, want ok %v at %d", seq, ok, at, wantOK, r.count())
		}
		if len(its) != len(want) {
			t.Fatalf("since(%d): %d items, want %d", seq, len(its), len(want))
		}
		for i, it := range its {
			if it.id != lifeID(want[i]) {
				t.Fatalf("since(%d): item %d is not %d", seq, i, want[i])
			}
		}
	}
	check(0, nil, true)
	for i := range 3 {
		r.push(lifeID(i), opRetire, time.Time{}, now.Add(time.Hour))
	}
	check(0, []int{0, 1, 2}, true)
	check(2, []int{2}, true)
	check(3, nil, true)
	for i := 3; i < 10; i++ {
		r.push(lifeID(i), opRetire, time.Time{}, now.Add(time.Hour))
	}
	check(6, []int{6, 7, 8, 9}, true)
	check(8, []int{8, 9}, true)
	check(5, nil, false) // item 5 was overwritten
	check(11, nil, false)
}

// FuzzSentJournal: reading a sent journal, whatever its bytes, never
// panics and keeps at most the ring's size (the frames' seals are real
// only in the seeds; what the fuzzer changes mostly stops at a frame that
// does not open, or at its length).
func FuzzSentJournal(f *testing.F) {
	cache, now, t0 := fileTestCache(f, &session.Config{Lifetime: time.Hour})
	dir := f.TempDir()
	n := &Node{cfg: Config{Farm: "fsj", RevocationFile: filepath.Join(dir, "seed"), Cache: cache,
		Now: func() time.Time { return time.Unix(0, now.Load()) }}, keys: testKeyring(f, "fsj"), sent: newSentRing(8),
		log: slog.New(slog.DiscardHandler)}
	n.lf.sentPath = sentPath(&n.cfg)
	for i := range 3 {
		n.sent.push(lifeID(i), opRetire, time.Time{}, t0.Add(time.Hour))
		n.syncSent()
	}
	seed, err := os.ReadFile(n.lf.sentPath + sentJournalSuffix)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add(seed[:len(seed)/2])
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1})
	f.Fuzz(func(t *testing.T, raw []byte) {
		if err := os.WriteFile(n.lf.sentPath+sentJournalSuffix, raw, 0o600); err != nil {
			t.Fatal(err)
		}
		m := &Node{cfg: n.cfg, keys: n.keys, sent: newSentRing(2), log: n.log}
		m.lf.sentPath = n.lf.sentPath
		m.readSent()
		if m.sent.len() > 2 {
			t.Fatalf("read %d items into a ring of 2", m.sent.len())
		}
		if !m.lf.sentCompact {
			t.Fatal("a journal read at Join is not folded into the sent file at the first sync")
		}
	})
}

// FuzzSentJournalFrames fuzzes what a sent journal's frames hold once
// they open (FuzzSentJournal's changes seldom get past the seal): the
// first frame's body (or, with named, the version and the hash of the
// sent file there), then two frames of arbitrary bodies, each sealed under
// the farm's key. Reading it never panics, and the ring holds the sent
// file's items and then those of the frames up to the first that does not
// decode (skipping those of a later version), as far as they are live and
// fit, in order; only a journal that names the sent file adds any.
func FuzzSentJournalFrames(f *testing.F) {
	cache, now, t0 := fileTestCache(f, &session.Config{Lifetime: time.Hour})
	exp := t0.Add(time.Hour).UnixNano()
	two := encodeSentFile([]sentItem{{id: lifeID(2), op: opRetire, expires: exp}, {id: lifeID(3), op: opCut, until: exp - 1, expires: exp}})
	one := encodeSentFile([]sentItem{{id: lifeID(4), op: opRetire, expires: exp}})
	f.Add(true, []byte(nil), two, one)
	f.Add(true, []byte(nil), []byte{2, 9}, one)
	f.Add(true, []byte(nil), two[:len(two)-1], one)
	f.Add(true, []byte(nil), []byte{}, one)
	f.Add(false, append([]byte{sentJournalVersion}, make([]byte, 32)...), two, one)
	f.Add(false, []byte{sentJournalVersion}, two, one)
	f.Add(false, []byte{2}, two, one)
	dir := f.TempDir()
	n := &Node{cfg: Config{Farm: "fsjf", RevocationFile: filepath.Join(dir, "seed"), Cache: cache,
		Now: func() time.Time { return time.Unix(0, now.Load()) }}, keys: testKeyring(f, "fsjf"), sent: newSentRing(8),
		log: slog.New(slog.DiscardHandler)}
	n.lf.sentPath = sentPath(&n.cfg)
	n.sent.push(lifeID(1), opRetire, time.Time{}, t0.Add(time.Hour))
	n.saveSent()
	hash := n.lf.sentHash
	if !n.lf.sentOnDisk || hash == ([32]byte{}) {
		f.Fatal("no sent file written")
	}
	const size = 4
	f.Fuzz(func(t *testing.T, named bool, first, a, b []byte) {
		if named {
			first = append([]byte{sentJournalVersion}, hash[:]...)
		}
		var raw []byte
		for _, body := range [][]byte{first, a, b} {
			raw = n.appendFrame(raw, body, sentJournalContext)
		}
		if err := os.WriteFile(n.lf.sentPath+sentJournalSuffix, raw, 0o600); err != nil {
			t.Fatal(err)
		}
		m := &Node{cfg: n.cfg, keys: n.keys, sent: newSentRing(size), log: n.log}
		m.lf.sentPath = n.lf.sentPath
		m.readSent()
		want := []sentItem{{id: lifeID(1), op: opRetire, expires: exp}}
		if bytes.Equal(first, append([]byte{sentJournalVersion}, hash[:]...)) {
			for _, body := range [][]byte{a, b} {
				if len(body) > 0 && body[0] != sentFileVersion {
					continue
				}
				its, err := decodeSentFile(body)
				if err != nil {
					break
				}
				want = append(want, its...)
			}
		}
		live := want[:0:0]
		for _, it := range want {
			if it.expires > now.Load() {
				live = append(live, it)
			}
		}
		live = live[max(0, len(live)-size):]
		if got := m.sent.live(m.cfg.Now()); !slices.Equal(got, live) {
			t.Fatalf("read %v, want %v", got, live)
		}
		if !m.lf.sentCompact {
			t.Fatal("a journal read at Join is not folded into the sent file at the first sync")
		}
	})
}
