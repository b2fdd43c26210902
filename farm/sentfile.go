package farm

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"os"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// The sent file keeps, across a restart, the retirements and grace cuts
// the node made and sent (Node.sent, see keepSent), so that a restarted
// node still re-sends them when a peer asks (resendHeld): a peer cut off
// when they went out, writing its sessions back into a store that lost
// them since, would otherwise bring a consumed, retired or cut session
// back whole. It is Config.RevocationFile with sentFileSuffix, a sibling
// of the lifecycle file rather than a part of it: an older node refuses a
// lifecycle file of an unknown version or with unknown record flags (its
// Join fails until the file is removed, and with it what the file kept
// that had not reached the farm), while it never opens this one. It is
// sealed with the farm's secret under a context of its own, mode 0600,
// written atomically (saveSent), and removed once nothing in the ring is
// within its session's life.
//
// What the node makes between two writes of the sent file goes to the
// sent journal beside it (sentJournalSuffix after it), appended and
// fsynced at most once every lifeSaveEvery after keepSent kept an item
// (syncSent), so that a node killed without Close (kill -9, out of memory,
// power lost) forgets at most what it made within about that second. The
// sent file keeps its format: a node that keeps no journal reads it as
// before, and never opens the journal (it loses what was made since the
// sent file was last written).
//
// A journal is a run of frames, each its length (four bytes, big-endian)
// and then an envelope sealed like the sent file under a context of its
// own. The first frame's body is sentJournalVersion and the SHA-256 of
// the sent file it extends (its bytes as written; zeros where there was
// none): a journal of another version, or that names another sent file
// (the sent file was rewritten and a crash came before the journal was
// removed, or a node that keeps no journal rewrote it), is ignored. Each
// further frame's body is a sent file's body (encodeSentFile) of the items
// appended, oldest first; one of another version is skipped. A frame cut
// short, or that does not open or decode, ends what the journal gives
// back (a power loss during an append), and is logged.
const (
	sentFileSuffix     = ".sent"
	sentFileContext    = "sent-lifecycle"
	sentFileVersion    = 1
	sentJournalSuffix  = ".journal"
	sentJournalContext = "sent-journal"
	sentJournalVersion = 1
	// sentFrameMax bounds the records of a journal frame (672 KB), so
	// that reading a frame never holds much more than one sync made.
	sentFrameMax = 16384
)

// A sent file's sealed body is its version (one byte) and then one record
// of sentRecLen bytes per item, oldest first: kind, session ID, until
// (Unix nanoseconds; 0 for a retirement) and expires (Unix nanoseconds).
// The ring's items and nothing more: no record, key or ticket.
const sentRecLen = 1 + session.IDLen + 8 + 8

// Kinds of a sent file's record. A record of another kind is skipped, so
// that a later version may add kinds of the same length without making
// this one's Join fail; anything else malformed is an error.
const (
	sentKindRetire = 1
	sentKindCut    = 2
)

// encodeSentFile encodes its, oldest first, as a sent file's body.
func encodeSentFile(its []sentItem) []byte {
	body := make([]byte, 0, 1+len(its)*sentRecLen)
	body = append(body, sentFileVersion)
	for _, it := range its {
		kind, until := byte(sentKindRetire), int64(0)
		if it.op == opCut {
			kind, until = sentKindCut, it.until
		}
		body = append(body, kind)
		body = append(body, it.id[:]...)
		body = binary.BigEndian.AppendUint64(body, uint64(until))
		body = binary.BigEndian.AppendUint64(body, uint64(it.expires))
	}
	return body
}

// decodeSentFile decodes a sent file's body, skipping records of unknown
// kinds.
func decodeSentFile(body []byte) ([]sentItem, error) {
	body, err := afterVersion(body, sentFileVersion)
	if err != nil {
		return nil, err
	}
	if len(body)%sentRecLen != 0 {
		return nil, errors.New("truncated record")
	}
	out := make([]sentItem, 0, len(body)/sentRecLen)
	for ; len(body) > 0; body = body[sentRecLen:] {
		r := body[1:]
		it := sentItem{id: session.ID(r[:session.IDLen])}
		r = r[session.IDLen:]
		u := int64(binary.BigEndian.Uint64(r))
		it.expires = int64(binary.BigEndian.Uint64(r[8:]))
		switch body[0] {
		case sentKindRetire:
			it.op = opRetire
		case sentKindCut:
			it.op, it.until = opCut, u
		default:
			continue
		}
		switch {
		case it.expires <= 0:
			return nil, errors.New("bad expiry")
		case it.op == opRetire && u != 0, it.op == opCut && u <= 0:
			return nil, errors.New("bad cut time")
		}
		out = append(out, it)
	}
	return out, nil
}

// sentPath returns the sent file's path, or "" without
// Config.RevocationFile.
func sentPath(cfg *Config) string {
	if cfg.RevocationFile == "" {
		return ""
	}
	return cfg.RevocationFile + sentFileSuffix
}

// sentJournalPath returns the sent journal's path beside the sent file at
// path.
func sentJournalPath(path string) string { return path + sentJournalSuffix }

// syncSent brings the sent file and its journal up to Node.sent: lifeSaver
// calls it at most once every lifeSaveEvery after keepSent kept an item
// (and whenever the lifecycle file is saved), so that what the node made
// reaches the disk within about lifeSaveEvery without a Close. The items
// kept since the last sync are appended to the journal, one sealed frame
// (a few for a great many), and fsynced: the cost of a sync follows what
// was made since the last, where rewriting the sent file costs the whole
// ring each time (QueueSize items: BenchmarkSaveSent). The sent file is
// rewritten instead (saveSent), and the journal removed, once the journal
// would hold more records than the ring has slots (so that it stays within
// about twice a full ring on disk), when the ring overran what was last
// synced, when an append fails, and at the first sync after a Join that
// found a journal, or a sent file it could not use. It never logs an ID.
func (n *Node) syncSent() {
	f := &n.lf
	if f.sentPath == "" || n.sent == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.sentCompact {
		its, at, ok := n.sent.since(f.sentSeq)
		switch {
		case !ok || f.journalRecs+len(its) > n.sent.size:
		case len(its) == 0:
			return
		default:
			err := n.appendJournal(its)
			if err == nil {
				f.sentSeq, f.sentFailed = at, false
				f.journalRecs += len(its)
				return
			}
			// Logged once in a run of failures, as the rewrite's
			// failure is (which sets sentFailed).
			if !f.sentFailed {
				n.log.Warn("farm: cannot append to the sent retirements and cuts journal; rewriting the sent file", "err", err)
			}
		}
	}
	n.compactSent()
}

// saveSent rewrites the sent file with the items of Node.sent still within
// their session's life, if anything changed since it was last written,
// and removes the journal (whose items it then holds); or removes both
// when no item is left. Close calls it, so that what a closed node leaves
// is one sent file, which an older node reads whole. It never logs an ID.
func (n *Node) saveSent() {
	f := &n.lf
	if f.sentPath == "" || n.sent == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	n.compactSent()
	// Should the rewrite have failed, the journal stays on disk for the
	// next Join; this node appends no more (sentCompact).
	n.closeJournal()
}

// compactSent is saveSent, with f.mu held.
func (n *Node) compactSent() {
	f := &n.lf
	its, at := n.sent.liveAt(n.cfg.Now())
	if len(its) == 0 {
		if f.sentOnDisk || f.journal != nil || f.sentCompact {
			n.closeJournal()
			for _, p := range []string{f.sentPath, sentJournalPath(f.sentPath)} {
				if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
					if !f.sentFailed {
						n.log.Warn("farm: cannot remove the sent retirements and cuts file", "file", p, "err", err)
					}
					f.sentFailed, f.sentCompact = true, true
					return
				}
			}
		}
		f.sentOnDisk, f.sentCompact, f.sentHash, f.sentSeq = false, false, [sha256.Size]byte{}, at
		f.journalRecs = 0
		return
	}
	if f.sentOnDisk && !f.sentCompact && f.journal == nil && f.journalRecs == 0 && at == f.sentSeq {
		return // unchanged (what expired meanwhile stays until the next write)
	}
	hdr := header{typ: valTombstone, time: n.cfg.Now(), sender: n.instance, farm: n.cfg.Farm}
	raw := n.keys.seal(nil, hdr, encodeSentFile(its), []byte(sentFileContext))
	if err := writeFileAtomic(f.sentPath, raw); err != nil {
		if !f.sentFailed {
			n.log.Warn("farm: cannot persist the sent retirements and cuts; a restart forgets them", "err", err)
		}
		f.sentFailed, f.sentCompact = true, true
		return
	}
	// The journal now names another sent file: should its removal fail,
	// or a crash come first, the next Join ignores it.
	n.closeJournal()
	if err := os.Remove(sentJournalPath(f.sentPath)); err != nil && !errors.Is(err, os.ErrNotExist) {
		n.log.Warn("farm: cannot remove the sent retirements and cuts journal", "err", err)
	}
	f.sentOnDisk, f.sentHash, f.sentSeq = true, sha256.Sum256(raw), at
	f.sentCompact, f.sentFailed, f.journalRecs = false, false, 0
}

// closeJournal closes the journal, if open. n.lf.mu is held.
func (n *Node) closeJournal() { closeJournalFile(&n.lf.journal) }

// appendJournal appends its, oldest first, to the sent journal, and
// fsyncs it; the first append after a compaction creates the journal,
// naming the sent file it extends. An error closes the journal and leaves
// the next sync to rewrite the sent file (a partial frame ends what the
// journal gives back). n.lf.mu is held.
func (n *Node) appendJournal(its []sentItem) error {
	f := &n.lf
	var buf []byte
	if f.journal == nil {
		f.journalRecs = 0
		buf = n.appendFrame(buf, append([]byte{sentJournalVersion}, f.sentHash[:]...), sentJournalContext)
	}
	for len(its) > 0 {
		k := min(len(its), sentFrameMax)
		buf = n.appendFrame(buf, encodeSentFile(its[:k]), sentJournalContext)
		its = its[k:]
	}
	if err := writeJournal(&f.journal, sentJournalPath(f.sentPath), buf); err != nil {
		f.sentCompact = true
		return err
	}
	return nil
}

// readSent reads the sent file and its journal, if there are, into
// Node.sent (the items still within their session's life, the last
// QueueSize of them, the sent file's first). A file that does not open
// under the farm's secrets, or does not decode, is logged and ignored,
// unlike the lifecycle file: everything in it reached the farm, and only a
// later re-send is lost (as it would be if the file were gone, which no
// seal can prevent); the next sync replaces it. So is a journal, or what
// follows in it a frame cut short or that does not open.
func (n *Node) readSent() {
	f := &n.lf
	if f.sentPath == "" || n.sent == nil {
		return
	}
	its, ok := n.readSentFile()
	jits, found := n.readJournal()
	if !ok || found {
		f.sentCompact = true
	}
	now := n.cfg.Now()
	n.sent.restore(its, now)
	n.sent.restore(jits, now)
	f.sentSeq = n.sent.count()
	// Written before the restart, or kept in held (the lifecycle file):
	// not waiting for the store's path (see unsettled).
	n.settled.mark(f.sentSeq, time.Time{})
}

// readSentFile reads the sent file, if there is one, and reports whether
// what is there (if anything) could be used.
func (n *Node) readSentFile() ([]sentItem, bool) {
	path := n.lf.sentPath
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, true
	}
	n.lf.sentOnDisk = true
	var raw []byte
	switch {
	case err != nil:
	case !fi.Mode().IsRegular(): // a pipe would block Join
		err = errors.New("not a regular file")
	default:
		raw, err = os.ReadFile(path)
	}
	if err != nil {
		n.log.Warn("farm: cannot read the sent retirements and cuts file; they will not be re-sent", "err", err)
		return nil, false
	}
	n.lf.sentHash = sha256.Sum256(raw)
	// No bound on the time it was sealed, as for the lifecycle file.
	_, body, err := n.keys.openLocal(raw, n.cfg.Farm, valTombstone, []byte(sentFileContext), n.cfg.Now())
	if err != nil {
		n.log.Warn("farm: the sent retirements and cuts file does not open under the farm's secrets; they will not be re-sent", "file", path, "err", err)
		return nil, false
	}
	its, err := decodeSentFile(body)
	if err != nil {
		n.log.Warn("farm: the sent retirements and cuts file is malformed; they will not be re-sent", "file", path, "err", err)
		return nil, false
	}
	return its, true
}

// readJournal reads the sent journal, if there is one, and reports
// whether there was: the items of its frames, in order, if its first
// frame names the sent file as read (n.lf.sentHash), up to the first frame
// cut short or that does not open or decode; frames of a later version
// are skipped.
func (n *Node) readJournal() (its []sentItem, found bool) {
	path := sentJournalPath(n.lf.sentPath)
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, false
	}
	var raw []byte
	switch {
	case err != nil:
	case !fi.Mode().IsRegular():
		err = errors.New("not a regular file")
	default:
		raw, err = os.ReadFile(path)
	}
	if err != nil {
		n.log.Warn("farm: cannot read the sent retirements and cuts journal; what it holds will not be re-sent", "err", err)
		return nil, true
	}
	now := n.cfg.Now()
	for first := true; len(raw) > 0; first = false {
		frame, rest, ok := nextFrame(raw)
		if !ok {
			n.log.Warn("farm: the sent retirements and cuts journal ends in a partial write; what came before is kept", "file", path)
			break
		}
		raw = rest
		_, body, err := n.keys.openLocal(frame, n.cfg.Farm, valTombstone, []byte(sentJournalContext), now)
		if err != nil {
			n.log.Warn("farm: a frame of the sent retirements and cuts journal does not open under the farm's secrets; it and what follows will not be re-sent", "file", path, "err", err)
			break
		}
		if first {
			switch {
			case len(body) == 0 || body[0] != sentJournalVersion:
				n.log.Warn("farm: the sent retirements and cuts journal is of an unknown version; ignored", "file", path)
				return nil, true
			case len(body) != 1+sha256.Size:
				n.log.Warn("farm: the sent retirements and cuts journal is malformed; ignored", "file", path)
				return nil, true
			case !bytes.Equal(body[1:], n.lf.sentHash[:]):
				// Left by a crash within a compaction, after the
				// sent file was written (which holds its items), or
				// the sent file was since written by a node that
				// keeps no journal.
				n.log.Info("farm: the sent retirements and cuts journal is older than the sent file; ignored", "file", path)
				return nil, true
			}
			continue
		}
		if len(body) > 0 && body[0] != sentFileVersion {
			continue // a later version's frame
		}
		got, err := decodeSentFile(body)
		if err != nil {
			n.log.Warn("farm: a frame of the sent retirements and cuts journal is malformed; it and what follows will not be re-sent", "file", path, "err", err)
			break
		}
		its = append(its, got...)
	}
	return its, true
}
