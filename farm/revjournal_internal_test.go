package farm

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/logtest"
	"github.com/tlsfarm/tlsfarm/session"
)

// revNode is a node keeping its pending revocations in file, its clock at
// *now, logging to the buffer it returns.
func revNode(t *testing.T, file string, cache *session.Cache, now *atomic.Int64) (*Node, *logtest.Buffer) {
	t.Helper()
	n := lifeNode(t, "revjournal", file, cache, now, false)
	n.revs.wake = make(chan struct{}, 1)
	logs := new(logtest.Buffer)
	n.log = slog.New(slog.NewTextHandler(logs, nil))
	return n, logs
}

// pendingChains returns the chains n has pending, in order.
func pendingChains(n *Node) []uint64 {
	n.revs.mu.Lock()
	defer n.revs.mu.Unlock()
	var out []uint64
	for _, p := range n.revs.pending {
		out = append(out, p.rev.chain)
	}
	return out
}

// chainRange returns first, first+1, ..., last.
func chainRange(first, last uint64) []uint64 {
	var out []uint64
	for c := first; c <= last; c++ {
		out = append(out, c)
	}
	return out
}

// settle marks the pending revocations of chains applied farm-wide (as
// applyRevocationChunk does on success) and lets applyRevocations drop
// them: its context is done, so it tries nothing else.
func settle(n *Node, chains ...uint64) {
	n.revs.mu.Lock()
	for _, c := range chains {
		if p := n.revs.byChain[c]; p != nil {
			p.stored, p.published = true, true
		}
	}
	n.revs.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	n.applyRevocations(ctx)
}

// sealJournalFrame returns a revocations journal frame of body, framed
// and sealed by hand: a length, then an envelope under the journal's
// context.
func sealJournalFrame(n *Node, body []byte) []byte {
	hdr := header{typ: valTombstone, time: n.cfg.Now(), sender: 1, farm: n.cfg.Farm}
	sealed := n.keys.seal(nil, hdr, body, []byte("pending-revocations-journal"))
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(sealed))), sealed...)
}

// TestRevocationAddAppends: a pending revocations file of the format
// every release has written (one sealed body of entries, as the old
// persistLocked wrote it) is read by Join, which rewrites it; revocations
// added after are appended to the journal beside it, without rewriting
// the file (which cost O(N) bytes and an fsync of them for each of N
// revocations made through a store outage), and the next Join reads both.
// A journal that names another file (left by a crash between a rewrite
// and the journal's removal) is ignored: that file holds what it added.
func TestRevocationAddAppends(t *testing.T) {
	cache, now, t0 := fileTestCache(t, &session.Config{Lifetime: time.Hour})
	file := filepath.Join(t.TempDir(), "revocations")
	journal := file + ".journal"
	n, _ := revNode(t, file, cache, now)
	var body []byte
	for c := uint64(1); c <= 1000; c++ {
		body = appendRevocationFile(body, revocation{chain: c, until: t0.Add(time.Hour)}, []session.ID{{byte(c), byte(c >> 8)}})
	}
	hdr := header{typ: valTombstone, time: t0, sender: 1, farm: "revjournal"}
	if err := os.WriteFile(file, n.keys.seal(nil, hdr, body, []byte(revocationFileContext)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := n.loadRevocations(); err != nil {
		t.Fatalf("an old-format file: %v", err)
	}
	if got := pendingChains(n); !slices.Equal(got, chainRange(1, 1000)) {
		t.Fatalf("an old-format file: %d revocations pending, want 1000", len(got))
	}
	base, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for c := uint64(1001); c <= 1005; c++ {
		n.addRevocation(session.ID{byte(c)}, revocation{chain: c, until: t0.Add(time.Hour)})
	}
	n.addRevocation(session.ID{9, 9}, revocation{chain: 3, until: t0.Add(2 * time.Hour)}) // one more ID, a later end
	if after, err := os.ReadFile(file); err != nil || !bytes.Equal(after, base) {
		t.Fatalf("adding 6 revocations to 1000 pending rewrote the file (%d bytes before, %d after, %v)", len(base), len(after), err)
	}
	if fi, err := os.Stat(journal); err != nil || fi.Size() == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("no journal beside the file: %v", err)
	}
	m, _ := revNode(t, file, cache, now)
	if err := m.loadRevocations(); err != nil {
		t.Fatal(err)
	}
	if got := pendingChains(m); !slices.Equal(got, chainRange(1, 1005)) {
		t.Fatalf("the next Join read %d revocations, want 1005", len(got))
	}
	p := m.revs.byChain[3]
	if !p.rev.until.Equal(t0.Add(2*time.Hour)) || len(p.ids) != 2 || p.ids[1] != (session.ID{9, 9}) {
		t.Fatalf("chain 3 read back as until %v with %d IDs; want the later end and 2 IDs", p.rev.until.Sub(t0), len(p.ids))
	}
	// Join rewrote the file whole and removed the journal.
	if _, err := os.Stat(journal); !os.IsNotExist(err) {
		t.Fatalf("the journal outlived Join's rewrite: %v", err)
	}

	// A stale journal: the file was rewritten after it was made.
	m.addRevocation(session.ID{}, revocation{chain: 2000, until: t0.Add(time.Hour)})
	stale, _ := os.ReadFile(journal) // adds chain 2000
	settle(m, 2000)
	m.revs.mu.Lock()
	m.compactRevocationsLocked()
	m.revs.mu.Unlock()
	if err := os.WriteFile(journal, stale, 0o600); err != nil {
		t.Fatal(err)
	}
	k, logs := revNode(t, file, cache, now)
	if err := k.loadRevocations(); err != nil {
		t.Fatal(err)
	}
	if got := pendingChains(k); !slices.Equal(got, chainRange(1, 1005)) || !strings.Contains(logs.String(), "older than") {
		t.Fatalf("with a stale journal: %d revocations read, want the file's 1005; logged %q", len(got), logs.String())
	}

	// Close leaves the file whole, for a node older than the journal.
	k.addRevocation(session.ID{}, revocation{chain: 3000, until: t0.Add(time.Hour)})
	k.closeRevocations()
	if _, err := os.Stat(journal); !os.IsNotExist(err) {
		t.Fatalf("the journal outlived Close: %v", err)
	}
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	_, body, err = k.keys.openLocal(raw, "revjournal", valTombstone, []byte(revocationFileContext), k.cfg.Now())
	if err != nil {
		t.Fatal(err)
	}
	if es, err := decodeRevocationFile(body); err != nil || len(es) != 1006 || es[1005].rev.chain != 3000 {
		t.Fatalf("the file Close left holds %d revocations (%v), want 1006", len(es), err)
	}
}

// TestRevocationJournalTornTail: a crash during an append leaves the
// journal's last frame cut short, or (a power loss after the file grew)
// zeros where it should be. Join must keep what came before and start:
// the cut frame's revocation was never reported durable. A frame that is
// whole but does not open, or does not decode, fails Join as a malformed
// file does.
func TestRevocationJournalTornTail(t *testing.T) {
	cache, now, t0 := fileTestCache(t, &session.Config{Lifetime: time.Hour})
	dir := t.TempDir()
	file := filepath.Join(dir, "revocations")
	journal := file + ".journal"
	n, _ := revNode(t, file, cache, now)
	n.addRevocation(session.ID{1}, revocation{chain: 1, until: t0.Add(time.Hour)})
	size1 := fileSize(t, journal)
	n.addRevocation(session.ID{2}, revocation{chain: 2, until: t0.Add(time.Hour)})
	size2 := fileSize(t, journal)
	n.addRevocation(session.ID{3}, revocation{chain: 3, until: t0.Add(time.Hour)})
	whole, err := os.ReadFile(journal)
	if err != nil {
		t.Fatalf("no journal: %v", err)
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Fatalf("three revocations added to none pending wrote the file whole: %v", err)
	}
	garbage := sealJournalFrame(n, []byte{1, 7, 0, 0})
	for _, tt := range []struct {
		name string
		raw  []byte
		want []uint64
		err  string
	}{
		{"whole", whole, []uint64{1, 2, 3}, ""},
		{"last frame cut", whole[:len(whole)-1], []uint64{1, 2}, ""},
		{"last frame's length only", whole[:size2+4], []uint64{1, 2}, ""},
		{"last frame's length cut", whole[:size2+2], []uint64{1, 2}, ""},
		{"the only frame cut", whole[:size1-5], nil, ""},
		{"the first frame cut", whole[:10], nil, ""},
		{"zeros after", append(slices.Clone(whole), make([]byte, 4096)...), []uint64{1, 2, 3}, ""},
		{"zeros for the last frame", append(slices.Clone(whole[:size2]), make([]byte, len(whole)-int(size2))...), []uint64{1, 2}, ""},
		{"a middle frame flipped", flip(whole, int(size1)+20), nil, "does not open"},
		{"a whole last frame flipped", flip(whole, len(whole)-3), nil, "does not open"},
		{"an unknown record", append(slices.Clone(whole), garbage...), nil, "malformed"},
		{"an unknown version", append(slices.Clone(whole), sealJournalFrame(n, []byte{2, 2, 0, 0, 0, 0, 0, 0, 0, 1})...), nil, "malformed"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := os.WriteFile(journal, tt.raw, 0o600); err != nil {
				t.Fatal(err)
			}
			m, logs := revNode(t, file, cache, now)
			err := m.loadRevocations()
			switch {
			case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
				t.Fatalf("loadRevocations = %v, want an error saying %q (%d pending)", err, tt.err, m.pendingRevocations())
			case tt.err != "":
				return
			case err != nil:
				t.Fatalf("loadRevocations: %v", err)
			}
			if got := pendingChains(m); !slices.Equal(got, tt.want) {
				t.Fatalf("read chains %v, want %v; logged %q", got, tt.want, logs.String())
			}
			if len(tt.raw) != len(whole) && !strings.Contains(logs.String(), "partial write") {
				t.Fatalf("a torn journal was not logged: %q", logs.String())
			}
			os.Remove(file) // Join rewrote what it read; the next case starts over
		})
	}
}

// fileSize returns the size of the file at path.
func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// flip returns a copy of b with byte i inverted.
func flip(b []byte, i int) []byte {
	b = slices.Clone(b)
	b[i] ^= 0xff
	return b
}

// TestRevocationJournalCompacts: one revocation stays pending (the store
// is down for it) while a thousand more are added and applied one at a
// time. The journal must not grow with what passed through: it is
// compacted (the file rewritten with what is pending, the journal
// started afresh) once it holds more records than about twice the
// pending set, and every Join reads exactly what is pending. Once none is
// pending, both files go.
func TestRevocationJournalCompacts(t *testing.T) {
	cache, now, t0 := fileTestCache(t, &session.Config{Lifetime: time.Hour})
	file := filepath.Join(t.TempDir(), "revocations")
	journal := file + ".journal"
	n, _ := revNode(t, file, cache, now)
	n.addRevocation(session.ID{1}, revocation{chain: 1, until: t0.Add(time.Hour)})
	rewrites, maxJournal := 0, int64(0)
	var last []byte
	for c := uint64(2); c <= 1000; c++ {
		n.addRevocation(session.ID{byte(c)}, revocation{chain: c, until: t0.Add(time.Hour)})
		settle(n, c)
		if raw, err := os.ReadFile(file); err == nil && !bytes.Equal(raw, last) {
			rewrites, last = rewrites+1, raw
		}
		if fi, err := os.Stat(journal); err == nil {
			maxJournal = max(maxJournal, fi.Size())
		}
		if c%250 == 0 {
			// A Join on a copy: it rewrites what it reads.
			cp := filepath.Join(t.TempDir(), "revocations")
			for _, sfx := range []string{"", ".journal"} {
				if raw, err := os.ReadFile(file + sfx); err == nil {
					os.WriteFile(cp+sfx, raw, 0o600)
				}
			}
			m, _ := revNode(t, cp, cache, now)
			if err := m.loadRevocations(); err != nil || !slices.Equal(pendingChains(m), []uint64{1}) {
				t.Fatalf("after %d revocations applied: read back %v (%v), want chain 1 alone", c-1, pendingChains(m), err)
			}
		}
	}
	frame := int64(len(sealJournalFrame(n, appendRevocationFile([]byte{1, 1}, revocation{}, []session.ID{{}}))))
	t.Logf("1998 records appended: %d rewrites, the journal at most %d bytes (a frame: %d)", rewrites, maxJournal, frame)
	if maxJournal == 0 {
		t.Fatal("no journal")
	}
	if rewrites < 2 || rewrites > 20 {
		t.Fatalf("the file was rewritten %d times for 1998 records with 1 to 2 pending, want a handful", rewrites)
	}
	if maxJournal > 300*frame {
		t.Fatalf("the journal grew to %d bytes (%d frames) with at most 2 revocations pending", maxJournal, maxJournal/frame)
	}
	settle(n, 1)
	for _, p := range []string{file, journal} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Fatalf("%s left with nothing pending: %v", filepath.Base(p), err)
		}
	}
}
