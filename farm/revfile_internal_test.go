package farm

import (
	"bytes"
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
	f.Add([]byte{revJournalVersion})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, body []byte) {
		recs, err := decodeRevJournal(body)
		if err != nil {
			return
		}
		again := []byte{revJournalVersion}
		for _, r := range recs {
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
		oldErr := n.receiveOldSessions(bytes.Clone(body), t0.Add(-time.Minute), t0)
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
