package farm

import (
	"bytes"
	"crypto/sha256"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// TestClosedRevocationTombstones: a node closed with revocations pending
// whose tombstones are sealed leaves the file whole, in its old format,
// and a journal of their tombstones whose first frame does not name the
// file as a journal of additions does: a node that predates tombstone
// records finds it names another file and reads the file alone (it
// refused the records it does not know), where the next node reads the
// tombstones back with the revocations, one only where its until is the
// pending one's.
func TestClosedRevocationTombstones(t *testing.T) {
	cache, now, t0 := fileTestCache(t, &session.Config{Lifetime: time.Hour})
	file := filepath.Join(t.TempDir(), "revocations")
	n, _ := revNode(t, file, cache, now)
	n.addRevocation(session.ID{1}, revocation{chain: 1, until: t0.Add(time.Hour)})
	n.addRevocation(session.ID{2}, revocation{chain: 2, until: t0.Add(time.Hour)})
	n.addRevocation(session.ID{3}, revocation{chain: 3, until: t0.Add(time.Hour)})
	hdr := header{time: t0, sender: n.instance, farm: n.cfg.Farm}
	n.revs.mu.Lock()
	tombs := map[uint64][]byte{}
	for _, p := range n.revs.pending[:2] { // as the revoker's first attempt seals them
		p.tomb = n.sealTombstone(hdr, p.rev).member
		tombs[p.rev.chain] = p.tomb
	}
	n.revs.mu.Unlock()
	n.closeRevocations()

	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	j, err := os.ReadFile(revJournalPath(file))
	if err != nil {
		t.Fatalf("no journal of tombstones: %v", err)
	}
	frame, _, ok := nextFrame(j)
	if !ok {
		t.Fatal("the journal's first frame does not read")
	}
	_, body, err := n.keys.openLocal(frame, n.cfg.Farm, valTombstone, []byte(revJournalContext), n.cfg.Now())
	if err != nil || len(body) != 1+sha256.Size || body[0] != revJournalVersion {
		t.Fatalf("the journal's first frame: %v, %d bytes", err, len(body))
	}
	hash := sha256.Sum256(raw)
	if bytes.Equal(body[1:], hash[:]) {
		t.Fatal("the journal Close left names the file: an older node would read it, and refuse its tombstone records")
	}

	m, _ := revNode(t, file, cache, now)
	if err := m.loadRevocations(); err != nil {
		t.Fatal(err)
	}
	for c := uint64(1); c <= 3; c++ {
		p := m.revs.byChain[c]
		if p == nil || !bytes.Equal(p.tomb, tombs[c]) {
			t.Errorf("chain %d read back with tombstone %t, want %t", c, p != nil && p.tomb != nil, tombs[c] != nil)
		}
	}
	// A later end drops the tombstone, in memory and in what is read back.
	m.addRevocation(session.ID{4}, revocation{chain: 1, until: t0.Add(2 * time.Hour)})
	if m.revs.byChain[1].tomb != nil {
		t.Fatal("a later end kept the tombstone of the earlier one")
	}
	k, _ := revNode(t, file, cache, now)
	if err := k.loadRevocations(); err != nil {
		t.Fatal(err)
	}
	if p := k.revs.byChain[1]; p == nil || p.tomb != nil || !p.rev.until.Equal(t0.Add(2*time.Hour)) {
		t.Fatal("read back after a later end: want the later end and no tombstone")
	}
	if p := k.revs.byChain[2]; p == nil || !bytes.Equal(p.tomb, tombs[2]) {
		t.Fatal("chain 2's tombstone lost by the rewrite of a restart")
	}
}
