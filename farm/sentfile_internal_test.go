package farm

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// sentNode is lifeNode with a ring of size for what it sends (Node.sent),
// kept in the sent file beside file.
func sentNode(t *testing.T, farm, file string, cache *session.Cache, now *atomic.Int64, size int) *Node {
	t.Helper()
	n := lifeNode(t, farm, file, cache, now, false)
	n.sent = newSentRing(size)
	n.lf.sentPath = sentPath(&n.cfg)
	return n
}

// TestSentFileRoundTrip: the retirements and cuts a node sent are written,
// sealed (no ID in clear), mode 0600, beside the revocation file and
// without touching it or the lifecycle file, oldest first (the ring
// wrapped); the next node reads them back into its ring in order, those
// past their session's life dropped, the last QueueSize kept if it has
// fewer slots; and re-sends them. An
// unchanged ring is not written again; once all expired, the file goes.
func TestSentFileRoundTrip(t *testing.T) {
	cache, now, t0 := fileTestCache(t, &session.Config{Lifetime: time.Hour})
	file := filepath.Join(t.TempDir(), "revocations")
	n1 := sentNode(t, "sf", file, cache, now, 4)
	until := t0.Add(30 * time.Second)
	ids := []session.ID{lifeID(1), lifeID(2), lifeID(3), lifeID(4), lifeID(5)}
	n1.sent.push(ids[0], opRetire, time.Time{}, t0.Add(time.Hour))   // pushed out of the ring
	n1.sent.push(ids[1], opRetire, time.Time{}, t0.Add(time.Minute)) // expires before the next node starts
	n1.sent.push(ids[2], opCut, until, t0.Add(time.Hour))
	n1.sent.push(ids[3], opRetire, time.Time{}, t0.Add(time.Hour))
	n1.sent.push(ids[4], opCut, until, t0.Add(time.Hour))
	n1.saveSent()
	for _, p := range []string{file, file + lifeFileSuffix} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Fatalf("%s was written: %v", filepath.Base(p), err)
		}
	}
	raw, err := os.ReadFile(file + sentFileSuffix)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(file + sentFileSuffix); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", st.Mode().Perm())
	}
	for _, id := range ids {
		if bytes.Contains(raw, id[:]) {
			t.Fatal("a session ID in clear in the file")
		}
	}
	st1, _ := os.Stat(file + sentFileSuffix)
	n1.saveSent()
	if st2, _ := os.Stat(file + sentFileSuffix); !os.SameFile(st1, st2) {
		t.Fatal("an unchanged ring was written again")
	}

	for _, tc := range []struct {
		size int
		want []session.ID
	}{
		{2, ids[3:]}, // a smaller QueueSize: the last ones
		{8, ids[2:]},
	} {
		now.Store(t0.Add(2 * time.Minute).UnixNano())
		n2 := sentNode(t, "sf", file, cache, now, tc.size)
		n2.readSent()
		got := n2.sent.live(n2.cfg.Now())
		if len(got) != len(tc.want) {
			t.Fatalf("size %d: read back %d items, want %d", tc.size, len(got), len(tc.want))
		}
		for i, s := range got {
			if s.id != tc.want[i] {
				t.Fatalf("size %d: item %d is not the one sent in its place", tc.size, i)
			}
			if cut := s.id == ids[2] || s.id == ids[4]; cut != (s.op == opCut) || cut && s.until != until.UnixNano() || s.expires != t0.Add(time.Hour).UnixNano() {
				t.Fatalf("size %d: item %d came back changed", tc.size, i)
			}
		}
		n2.resendHeld(t.Context(), true)
		if got := n2.rs.resent.Load(); got != uint64(len(tc.want)) {
			t.Fatalf("size %d: re-sent %d items, want %d", tc.size, got, len(tc.want))
		}
		if tc.size == 8 {
			// All expired: the file goes.
			now.Store(t0.Add(2 * time.Hour).UnixNano())
			n2.saveSent()
			if _, err := os.Stat(file + sentFileSuffix); !os.IsNotExist(err) {
				t.Fatalf("the file is still there with nothing in it live: %v", err)
			}
		}
	}
}

// TestSentFileBad: a sent file that does not open under the farm's
// secrets, or is malformed, is logged (naming the file, no ID) and
// ignored, unlike the lifecycle file: what it held reached the farm. The
// next save replaces it. A record of an unknown kind is skipped.
func TestSentFileBad(t *testing.T) {
	cache, now, t0 := fileTestCache(t, &session.Config{Lifetime: time.Hour})
	dir := t.TempDir()
	file := filepath.Join(dir, "rev")
	n := sentNode(t, "sf1", file, cache, now, 8)
	n.readSent() // no file: nothing
	if n.sent.len() != 0 || n.lf.sentOnDisk {
		t.Fatal("read something from no file")
	}
	other := sentNode(t, "sf2", filepath.Join(dir, "other"), cache, now, 8)
	other.sent.push(lifeID(1), opRetire, time.Time{}, t0.Add(time.Hour))
	other.saveSent()
	foreign, err := os.ReadFile(other.lf.sentPath)
	if err != nil {
		t.Fatal(err)
	}
	n.lifeq.push([]item{{id: lifeID(1), op: opRetire, expires: t0.Add(time.Hour)}}, t0)
	n.saveLife()
	lifeRaw, err := os.ReadFile(n.lf.path)
	if err != nil {
		t.Fatal(err)
	}
	hdr := header{typ: valTombstone, time: t0, farm: "sf1"}
	unknownKind := append(encodeSentFile([]sentItem{{id: lifeID(2), op: opRetire, expires: t0.Add(time.Hour).UnixNano()}}),
		encodeSentFile([]sentItem{{id: lifeID(3), op: opRetire, expires: t0.Add(time.Hour).UnixNano()}})[1:]...)
	unknownKind[1+sentRecLen] = 9
	for name, tc := range map[string]struct {
		raw  []byte
		want int // items read back
	}{
		"garbage":         {[]byte("not a sealed file at all"), 0},
		"another farm's":  {foreign, 0},
		"lifecycle file":  {lifeRaw, 0},
		"unknown version": {n.keys.seal(nil, hdr, []byte{9}, []byte(sentFileContext)), 0},
		"bad record":      {n.keys.seal(nil, hdr, []byte{sentFileVersion, 1, 2}, []byte(sentFileContext)), 0},
		"unknown kind":    {n.keys.seal(nil, hdr, unknownKind, []byte(sentFileContext)), 1},
	} {
		var logs bytes.Buffer
		m := sentNode(t, "sf1", file, cache, now, 8)
		m.log = slog.New(slog.NewTextHandler(&logs, nil))
		if err := os.WriteFile(m.lf.sentPath, tc.raw, 0o600); err != nil {
			t.Fatal(err)
		}
		m.readSent()
		if got := m.sent.len(); got != tc.want {
			t.Errorf("%s: read %d items, want %d", name, got, tc.want)
		}
		if logged := logs.String(); tc.want == 0 && !strings.Contains(logged, m.lf.sentPath) {
			t.Errorf("%s: logged %q, want a warning naming the file", name, logged)
		}
		// The next save replaces the bad file with the ring (here: one
		// item).
		m.sent.push(lifeID(4), opRetire, time.Time{}, t0.Add(time.Hour))
		m.saveSent()
		m2 := sentNode(t, "sf1", file, cache, now, 8)
		m2.readSent()
		if live := m2.sent.live(t0); len(live) < 1 || live[len(live)-1].id != lifeID(4) {
			t.Fatalf("%s: the next save did not replace the file", name)
		}
	}
	// A named pipe there is not read (that would block Join).
	m := sentNode(t, "sf1", file, cache, now, 8)
	os.Remove(m.lf.sentPath)
	if err := syscall.Mkfifo(m.lf.sentPath, 0o600); err != nil {
		t.Skip(err)
	}
	done := make(chan struct{})
	go func() { m.readSent(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("reading a named pipe as the sent file blocked")
	}
	// The lifecycle file itself still reads: the sent file did not touch it.
	if ks, err := n.readLife(); err != nil || len(ks) != 1 {
		t.Fatalf("lifecycle file: %d items, %v", len(ks), err)
	}
}

// FuzzDecodeSentFile: decoding a sent file's body never panics, and what
// decodes encodes back to a body that decodes to the same items (records
// of unknown kinds, skipped, are not written back).
func FuzzDecodeSentFile(f *testing.F) {
	now := time.Unix(1_700_000_000, 0).UnixNano()
	f.Add(encodeSentFile([]sentItem{
		{id: lifeID(1), op: opRetire, expires: now},
		{id: lifeID(2), op: opCut, until: now, expires: now + int64(time.Hour)},
	}))
	f.Add([]byte{sentFileVersion})
	f.Add([]byte{2, 0})
	f.Add(encodeLifeFile([]keptLife{{id: lifeID(1), retire: true, expires: time.Unix(0, now), bus: true}}))
	f.Fuzz(func(t *testing.T, body []byte) {
		its, err := decodeSentFile(body)
		if err != nil {
			return
		}
		enc := encodeSentFile(its)
		its2, err := decodeSentFile(enc)
		if err != nil {
			t.Fatalf("re-encoded body does not decode: %v", err)
		}
		if !bytes.Equal(encodeSentFile(its2), enc) {
			t.Fatal("round trip changed the items")
		}
		if len(body) == len(enc) && !bytes.Equal(body, enc) {
			t.Fatal("a body of known records only does not encode back the same")
		}
	})
}
