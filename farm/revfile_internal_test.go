package farm

import (
	"bytes"
	"crypto/sha256"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// TestRevocationFileMalformed: a pending revocations file whose sealed
// body has bytes after its last whole entry, or an entry that announces
// more IDs than it holds, stops the node from starting with a clear error,
// rather than being taken in part; a well-formed one is applied.
func TestRevocationFileMalformed(t *testing.T) {
	cache, now, t0 := fileTestCache(t, &session.Config{Lifetime: time.Hour})
	good := appendRevocationFile(nil, revocation{chain: 7, until: t0.Add(time.Hour)}, []session.ID{{1, 2}})
	short := binary16(appendRevocationFile(nil, revocation{chain: 8, until: t0.Add(time.Hour)}, nil), 2)
	for _, tt := range []struct {
		name string
		body []byte
		ok   bool
	}{
		{"good", good, true},
		{"trailing", append(bytes.Clone(good), 1, 2, 3, 4, 5), false},
		{"announces more IDs", short, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "revocations")
			n := lifeNode(t, "revfile", file, cache, now, false)
			n.revs.wake = make(chan struct{}, 1)
			hdr := header{typ: valTombstone, time: t0, sender: 1, farm: "revfile"}
			if err := os.WriteFile(file, n.keys.seal(nil, hdr, tt.body, []byte(revocationFileContext)), 0o600); err != nil {
				t.Fatal(err)
			}
			err := n.loadRevocations()
			switch {
			case tt.ok && err != nil:
				t.Fatalf("loadRevocations: %v", err)
			case !tt.ok && err == nil:
				t.Fatalf("a malformed file was taken (%d revocations pending)", n.pendingRevocations())
			case tt.ok && n.pendingRevocations() != 1:
				t.Fatalf("%d revocations pending, want 1", n.pendingRevocations())
			}
		})
	}
}

// binary16 sets the ID count of the single entry in b to k.
func binary16(b []byte, k uint16) []byte {
	b[16], b[17] = byte(k>>8), byte(k)
	return b
}

// FuzzRevocationFile checks the decoder of the pending revocations file's
// body: no panic, and what it accepts re-encodes to the same bytes.
func FuzzRevocationFile(f *testing.F) {
	f.Add(appendRevocationFile(nil, revocation{chain: 1, until: time.Unix(5, 0)}, []session.ID{{1}, {2}}))
	f.Add(appendRevocationFile(appendRevocationFile(nil, revocation{chain: 2}, nil), revocation{chain: 3, until: time.Unix(0, 9)}, []session.ID{{3}}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, body []byte) {
		es, err := decodeRevocationFile(body)
		if err != nil {
			return
		}
		var again []byte
		for _, e := range es {
			again = appendRevocationFile(again, e.rev, e.ids)
		}
		if !bytes.Equal(again, body) {
			t.Fatalf("round trip: %x -> %x", body, again)
		}
	})
}

// FuzzRevocationJournal checks the decoder of a pending revocations
// journal frame's body (after the first): no panic, and what it accepts
// re-encodes to the same bytes.
func FuzzRevocationJournal(f *testing.F) {
	add := appendRevRecord([]byte{revJournalVersion}, revRecAdd, revocation{chain: 1, until: time.Unix(5, 0)}, []session.ID{{1}})
	f.Add(add)
	f.Add(appendRevRecord(appendRevRecord(slices.Clone(add), revRecDone, revocation{chain: 1}, nil), revRecAdd, revocation{chain: 2}, nil))
	f.Add([]byte{revJournalVersion, revRecDone, 0, 0, 0, 0, 0, 0, 0})
	f.Add(appendRevTomb(slices.Clone(add), revocation{chain: 1, until: time.Unix(5, 0)}, []byte("sealed")))
	f.Add(appendRevTomb([]byte{revJournalVersion}, revocation{chain: 2}, []byte{0}))
	f.Add([]byte{revJournalVersion})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, body []byte) {
		recs, err := decodeRevJournal(body)
		if err != nil {
			return
		}
		again := []byte{revJournalVersion}
		for _, r := range recs {
			if r.tomb != nil {
				again = appendRevTomb(again, r.rev, r.tomb)
				continue
			}
			kind := byte(revRecAdd)
			if r.done {
				kind = revRecDone
			}
			again = appendRevRecord(again, kind, r.rev, r.ids)
		}
		if !bytes.Equal(again, body) {
			t.Fatalf("round trip: %x -> %x", body, again)
		}
	})
}

// FuzzReceiveSessionBodies checks the two scanners of msgSessions bodies
// that do not decode whole records, receiveLazy (LazyPeers) and
// receiveOldSessions (a kept message past MaxAge), on arbitrary
// (authentic-looking) plaintext: no panic, and a body that parseSessions
// accepts they accept too, counting each of its sessions once.
func FuzzReceiveSessionBodies(f *testing.F) {
	t0 := time.Unix(1_700_000_000, 0)
	b, _ := appendSessions(nil, []sessionItem{
		{id: session.ID{1}, rec: session.Record{State: []byte("s"), Expires: t0.Add(time.Hour), Parent: session.ID{2}}},
		{id: session.ID{3}, rec: session.Record{ServerName: "a.example", State: []byte("t"), Expires: t0.Add(-time.Hour)}},
	})
	f.Add(b)
	f.Add(b[:len(b)-1])
	cache, now, _ := fileTestCache(f, &session.Config{Lifetime: time.Hour, ResumeGrace: 10 * time.Second, SweepInterval: -1})
	now.Store(t0.UnixNano())
	f.Fuzz(func(t *testing.T, body []byte) {
		n := lifeNode(t, "fuzzrecv", "", cache, now, false)
		n.pend = newPending(8)
		_, perr := parseSessions(body)
		lazyErr := n.receiveLazy(bytes.Clone(body), t0)
		oldErr := n.receiveOldSessions(bytes.Clone(body), t0.Add(-time.Minute), t0, true)
		if perr == nil && (lazyErr != nil || oldErr != nil) {
			t.Fatalf("a body parseSessions accepts was refused: lazy %v, old %v", lazyErr, oldErr)
		}
		if perr == nil {
			if got, want := n.ctr.receivedSessions.Load(), 2*uint64(countSessions(body)); got != want {
				t.Fatalf("counted %d sessions received, want %d", got, want)
			}
		}
	})
}

// TestFilesAfterClockStepBack: the pending revocations file, the kept
// retirements and cuts file and the sent file are the node's own, sealed
// when it wrote them. A node restarted after its clock was stepped back
// (NTP correcting a clock that ran ahead) must still read them: refusing
// the first two fails Join, and the operator's only way out loses what
// they hold; refusing the sent file loses its re-sends.
func TestFilesAfterClockStepBack(t *testing.T) {
	cache, now, t0 := fileTestCache(t, &session.Config{Lifetime: time.Hour})
	file := filepath.Join(t.TempDir(), "revocations")
	n := lifeNode(t, "clockback", file, cache, now, false)
	n.revs.wake = make(chan struct{}, 1)
	written := t0.Add(time.Minute) // by the clock that ran ahead
	hdr := header{typ: valTombstone, time: written, sender: 1, farm: "clockback"}
	body := appendRevocationFile(nil, revocation{chain: 7, until: t0.Add(time.Hour)}, []session.ID{{1, 2}})
	if err := os.WriteFile(file, n.keys.seal(nil, hdr, body, []byte(revocationFileContext)), 0o600); err != nil {
		t.Fatal(err)
	}
	life := encodeLifeFile([]keptLife{{id: session.ID{3}, retire: true, expires: t0.Add(time.Hour), bus: true}})
	if err := os.WriteFile(n.lf.path, n.keys.seal(nil, hdr, life, []byte(lifeFileContext)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := n.loadRevocations(); err != nil {
		t.Fatalf("the revocations file written a minute ahead: %v", err)
	}
	if ks, err := n.readLife(); err != nil || len(ks) != 1 {
		t.Fatalf("the lifecycle file written a minute ahead: %d items, %v", len(ks), err)
	}
	n.sent, n.lf.sentPath = newSentRing(4), sentPath(&n.cfg)
	sent := encodeSentFile([]sentItem{{id: session.ID{4}, op: opRetire, expires: t0.Add(time.Hour).UnixNano()}})
	if err := os.WriteFile(n.lf.sentPath, n.keys.seal(nil, hdr, sent, []byte(sentFileContext)), 0o600); err != nil {
		t.Fatal(err)
	}
	if n.readSent(); n.sent.len() != 1 {
		t.Fatalf("the sent file written a minute ahead: %d items, want 1", n.sent.len())
	}
}

// FuzzRevocationReplay fuzzes what the pending revocations journal's
// frames hold once they open (the frames FuzzRevocationJournal's bodies
// stand for are sealed, and a changed seal opens nothing): the first
// frame's body (or, with named, the version and the hash of the file
// there), then two frames of arbitrary bodies, each sealed under the
// farm's key. Reading them never panics, and gives what a plain replay of
// the decoded records over the file's entries gives: an add merges into
// its chain's entry (the later until, which drops its tombstone; the IDs
// appended) or adds one at the end, a done removes its chain, a tombstone
// is kept by its chain's entry if their untils are the same; an error for
// a first frame of another version or length, or a later frame that does
// not decode. A first frame that names the file as a journal of
// tombstones only (revTombsOnlyHash, as Close leaves it) is read as one
// that names the file.
func FuzzRevocationReplay(f *testing.F) {
	cache, now, t0 := fileTestCache(f, &session.Config{Lifetime: time.Hour})
	rec := func(kind byte, chain uint64, until time.Time, ids ...session.ID) []byte {
		return appendRevRecord([]byte{revJournalVersion}, kind, revocation{chain: chain, until: until}, ids)
	}
	u := t0.Add(time.Hour)
	add2 := append(rec(revRecAdd, 2, u, session.ID{2}), rec(revRecAdd, 1, u.Add(time.Second), session.ID{3})[1:]...)
	done1 := append(rec(revRecDone, 1, time.Time{}), rec(revRecAdd, 1, u, session.ID{4})[1:]...)
	f.Add(true, []byte(nil), add2, done1)
	f.Add(true, []byte(nil), rec(revRecDone, 2, time.Time{}), add2)
	f.Add(true, []byte(nil), add2[:len(add2)-1], done1)
	f.Add(true, []byte(nil), []byte{revJournalVersion}, []byte{})
	f.Add(false, append([]byte{revJournalVersion}, make([]byte, 32)...), add2, done1)
	f.Add(false, []byte{revJournalVersion}, add2, done1)
	f.Add(false, []byte{2}, add2, done1)
	tomb := func(chain uint64, until time.Time, member string) []byte {
		return appendRevTomb([]byte{revJournalVersion}, revocation{chain: chain, until: until}, []byte(member))
	}
	tombs := append(tomb(1, u, "one")[:], tomb(2, u, "two")[1:]...)
	f.Add(true, []byte(nil), tombs, done1)
	f.Add(true, []byte(nil), add2, tomb(1, u.Add(time.Second), "one later"))
	f.Add(true, []byte(nil), append(slices.Clone(tombs), add2[1:]...), tomb(3, u, "none pending"))
	file := filepath.Join(f.TempDir(), "revocations")
	n := lifeNode(f, "revreplay", file, cache, now, false)
	hdr := header{typ: valTombstone, time: t0, sender: 1, farm: "revreplay"}
	body := appendRevocationFile(nil, revocation{chain: 1, until: u}, []session.ID{{1}})
	raw := n.keys.seal(nil, hdr, body, []byte(revocationFileContext))
	if err := os.WriteFile(file, raw, 0o600); err != nil {
		f.Fatal(err)
	}
	hash := sha256.Sum256(raw)
	only := revTombsOnlyHash(hash)
	f.Add(false, append([]byte{revJournalVersion}, only[:]...), tombs, add2)
	base, err := decodeRevocationFile(body)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, named bool, first, a, b []byte) {
		if named {
			first = append([]byte{revJournalVersion}, hash[:]...)
		}
		var j []byte
		for _, body := range [][]byte{first, a, b} {
			j = n.appendFrame(j, body, revJournalContext)
		}
		if err := os.WriteFile(revJournalPath(file), j, 0o600); err != nil {
			t.Fatal(err)
		}
		got, found, err := n.readRevocations(file)
		// The model.
		want := slices.Clone(base)
		wantErr := false
		switch {
		case len(first) == 0 || first[0] != revJournalVersion || len(first) != 1+sha256.Size:
			wantErr = true
		case !bytes.Equal(first[1:], hash[:]) && !bytes.Equal(first[1:], only[:]):
		default:
			for _, body := range [][]byte{a, b} {
				recs, err := decodeRevJournal(body)
				if err != nil {
					wantErr = true
					break
				}
				for _, r := range recs {
					i := slices.IndexFunc(want, func(e revocationEntry) bool { return e.rev.chain == r.rev.chain })
					switch {
					case r.done && i >= 0:
						want = slices.Delete(want, i, i+1)
					case r.done:
					case r.tomb != nil:
						if i >= 0 && want[i].rev.until.Equal(r.rev.until) {
							want[i].tomb = r.tomb
						}
					case i >= 0:
						if r.rev.until.After(want[i].rev.until) {
							want[i].rev.until = r.rev.until
							want[i].tomb = nil
						}
						want[i].ids = append(slices.Clip(want[i].ids), r.ids...)
					default:
						want = append(want, revocationEntry{rev: r.rev, ids: r.ids})
					}
				}
			}
		}
		if wantErr {
			if err == nil {
				t.Fatalf("read %d entries, want an error", len(got))
			}
			return
		}
		if err != nil || !found {
			t.Fatalf("readRevocations: %v (found %t)", err, found)
		}
		if len(got) != len(want) {
			t.Fatalf("%d entries, want %d", len(got), len(want))
		}
		for i := range got {
			if !bytes.Equal(got[i].tomb, want[i].tomb) {
				t.Fatalf("entry %d (chain %d): tombstone %q, want %q", i, got[i].rev.chain, got[i].tomb, want[i].tomb)
			}
			if got[i].rev.chain != want[i].rev.chain || !got[i].rev.until.Equal(want[i].rev.until) || !slices.Equal(got[i].ids, want[i].ids) {
				t.Fatalf("entry %d: chain %d until %v, %d IDs; want chain %d until %v, %d IDs", i,
					got[i].rev.chain, got[i].rev.until, len(got[i].ids), want[i].rev.chain, want[i].rev.until, len(want[i].ids))
			}
		}
	})
}
