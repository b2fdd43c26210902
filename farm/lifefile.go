package farm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// The lifecycle file keeps, across a restart, the retirements and grace
// cuts the node kept after failed writes (Node.lifeq, Node.lifesq): it is
// Config.RevocationFile with lifeFileSuffix, a sibling, so that the
// revocation file keeps its format (older nodes read it as before, and
// ignore this one). It is sealed with the farm's secret under a context of
// its own, written off the handshake path at most once every
// lifeSaveEvery while items are kept (and on Close), atomically, and
// removed once they have been written and published.
const (
	lifeFileSuffix  = ".lifecycle"
	lifeFileContext = "kept-lifecycle"
	lifeFileVersion = 1
	lifeSaveEvery   = time.Second
)

// A lifecycle file's sealed body is its version (one byte) and then one
// record of lifeRecLen bytes per kept item: flags, session ID, until
// (Unix nanoseconds; 0 for a retirement), expires (Unix nanoseconds), and
// child (a cut's, else zeros).
const lifeRecLen = 1 + session.IDLen + 8 + 8 + session.IDLen

// Flags of a lifecycle file's record.
const (
	lifeRetire = 1 << 0 // a retirement (else a cut)
	lifeBus    = 1 << 1 // its bus part is to be published
	lifeStore  = 1 << 2 // its store part is to be written
	lifeFlags  = lifeRetire | lifeBus | lifeStore
)

// A keptLife is one record of the lifecycle file.
type keptLife struct {
	id, child      session.ID
	retire         bool
	until, expires time.Time
	bus, store     bool
}

func (k *keptLife) flags() byte {
	var f byte
	if k.retire {
		f |= lifeRetire
	}
	if k.bus {
		f |= lifeBus
	}
	if k.store {
		f |= lifeStore
	}
	return f
}

// encodeLifeFile encodes ks as a lifecycle file's body, sorted, so that
// the same items encode the same.
func encodeLifeFile(ks []keptLife) []byte {
	slices.SortFunc(ks, func(a, b keptLife) int {
		if c := bytes.Compare(a.id[:], b.id[:]); c != 0 {
			return c
		}
		return int(a.flags()) - int(b.flags())
	})
	body := make([]byte, 0, 1+len(ks)*lifeRecLen)
	body = append(body, lifeFileVersion)
	for i := range ks {
		k := &ks[i]
		body = append(body, k.flags())
		body = append(body, k.id[:]...)
		var u uint64
		if !k.retire {
			u = uint64(k.until.UnixNano())
		}
		body = binary.BigEndian.AppendUint64(body, u)
		body = binary.BigEndian.AppendUint64(body, uint64(k.expires.UnixNano()))
		body = append(body, k.child[:]...)
	}
	return body
}

// decodeLifeFile decodes a lifecycle file's body.
func decodeLifeFile(body []byte) ([]keptLife, error) {
	body, err := afterVersion(body, lifeFileVersion)
	if err != nil {
		return nil, err
	}
	if len(body)%lifeRecLen != 0 {
		return nil, errors.New("truncated record")
	}
	out := make([]keptLife, 0, len(body)/lifeRecLen)
	for ; len(body) > 0; body = body[lifeRecLen:] {
		f := body[0]
		if f&^lifeFlags != 0 || f&(lifeBus|lifeStore) == 0 {
			return nil, fmt.Errorf("bad flags %#x", f)
		}
		k := keptLife{retire: f&lifeRetire != 0, bus: f&lifeBus != 0, store: f&lifeStore != 0}
		r := body[1:]
		k.id = session.ID(r[:session.IDLen])
		r = r[session.IDLen:]
		u := int64(binary.BigEndian.Uint64(r))
		e := int64(binary.BigEndian.Uint64(r[8:]))
		k.child = session.ID(r[16:])
		switch {
		case e <= 0:
			return nil, errors.New("bad expiry")
		case k.retire != (u == 0):
			return nil, errors.New("bad cut time")
		case u < 0:
			return nil, errors.New("bad cut time")
		}
		if !k.retire {
			k.until = time.Unix(0, u)
		}
		k.expires = time.Unix(0, e)
		out = append(out, k)
	}
	return out, nil
}

// lifeFile is the node's state for the lifecycle file.
type lifeFile struct {
	path  string
	dirty chan struct{} // has a value when the kept items changed

	mu     sync.Mutex
	saved  []byte // the body on disk; nil: none written by this node
	onDisk bool   // a file may be there (read at Join, or written)
	failed bool   // the last write failed, and said so

	// The sent file and its journal (see syncSent, saveSent).
	sentPath    string
	sentDirty   chan struct{}     // has a value when keepSent kept an item
	sentSeq     uint64            // the ring's pushes the files hold (sentRing.count)
	sentHash    [sha256.Size]byte // the sent file's, as the journal names it; zeros: none
	sentOnDisk  bool              // a sent file may be there (read at Join, or written)
	sentCompact bool              // the next sync rewrites the sent file (see syncSent)
	sentFailed  bool              // the last write failed, and said so
	journal     *os.File          // open for appending; nil: none since the last rewrite
	journalRecs int               // records appended to the journal
}

// lifePath returns the lifecycle file's path, or "" without
// Config.RevocationFile.
func lifePath(cfg *Config) string {
	if cfg.RevocationFile == "" {
		return ""
	}
	return cfg.RevocationFile + lifeFileSuffix
}

// lifeChanged asks lifeSaver for a write (laterLife.notify).
func (n *Node) lifeChanged() {
	select {
	case n.lf.dirty <- struct{}{}:
	default:
	}
}

// sentChanged asks lifeSaver for a sync of the sent file (keepSent): on
// the handshake path, so a send that never blocks (and, the channel full,
// takes no lock).
func (n *Node) sentChanged() {
	select {
	case n.lf.sentDirty <- struct{}{}:
	default:
	}
}

// lifeSaver writes the lifecycle file when the kept items change, and
// syncs the sent file (syncSent) when this node made a retirement or a
// cut, and with every write of the lifecycle file: one pass at most every
// lifeSaveEvery, serving whatever asked meanwhile.
func (n *Node) lifeSaver(ctx context.Context) {
	defer n.wg.Done()
	for {
		life := false
		select {
		case <-ctx.Done():
			return
		case <-n.lf.dirty:
			life = true
		case <-n.lf.sentDirty:
		}
		// A want of the other kind meanwhile is served by this pass.
		select {
		case <-n.lf.dirty:
			life = true
		default:
		}
		select {
		case <-n.lf.sentDirty:
		default:
		}
		if life {
			n.saveLife()
		}
		n.syncSent()
		t := time.NewTimer(lifeSaveEvery)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// lifeSnapshot returns the kept items (in flight included) as the
// lifecycle file records them: where the store has a path of its own, an
// item of n.lifeq has its bus part left, one of n.lifesq its store part;
// on the one path, both.
func (n *Node) lifeSnapshot() []keptLife {
	var ks []keptLife
	add := func(l *laterLife, bus, store bool) {
		if l == nil {
			return
		}
		for _, it := range l.snapshot() {
			if it.op != opRetire && it.op != opCut {
				continue
			}
			ks = append(ks, keptLife{id: it.id, child: it.child, retire: it.op == opRetire,
				until: it.until, expires: it.expires, bus: bus, store: store})
		}
	}
	if n.sq == nil {
		add(n.lifeq, true, true)
	} else {
		add(n.lifeq, true, false)
		add(n.lifesq, false, true)
	}
	return ks
}

// saveLife writes the kept items to the lifecycle file, if they changed
// since the last write, or removes it when none is kept. It never logs an
// ID.
func (n *Node) saveLife() {
	f := &n.lf
	if f.path == "" {
		return
	}
	ks := n.lifeSnapshot()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(ks) == 0 {
		if f.onDisk {
			if err := os.Remove(f.path); err != nil && !errors.Is(err, os.ErrNotExist) {
				if !f.failed {
					n.log.Warn("farm: cannot remove the kept retirements and cuts file", "err", err)
				}
				f.failed = true
				return
			}
			f.onDisk, f.saved = false, nil
		}
		return
	}
	body := encodeLifeFile(ks)
	if f.onDisk && bytes.Equal(body, f.saved) {
		return
	}
	hdr := header{typ: valTombstone, time: n.cfg.Now(), sender: n.instance, farm: n.cfg.Farm}
	if err := writeFileAtomic(f.path, n.keys.seal(nil, hdr, body, []byte(lifeFileContext))); err != nil {
		if !f.failed {
			n.log.Warn("farm: cannot persist the kept retirements and cuts; they stay in memory and are retried", "err", err)
		}
		f.failed = true
		return
	}
	f.onDisk, f.saved, f.failed = true, body, false
}

// readLife reads and opens the lifecycle file, if there is one. A file
// that does not open under the farm's secrets, or does not decode, is an
// error, as for Config.RevocationFile: the node must not start without
// what it promised the farm, unless the operator removes the file.
func (n *Node) readLife() ([]keptLife, error) {
	path := n.lf.path
	if path == "" {
		return nil, nil
	}
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	n.lf.onDisk = true
	// No bound on the time it was sealed, as for the revocations file.
	_, body, err := n.keys.openLocal(raw, n.cfg.Farm, valTombstone, []byte(lifeFileContext), n.cfg.Now())
	if err != nil {
		return nil, fmt.Errorf("farm: the kept retirements and cuts file %s does not open under the farm's secrets (remove it to start without it): %w", path, err)
	}
	ks, err := decodeLifeFile(body)
	if err != nil {
		return nil, fmt.Errorf("farm: the kept retirements and cuts file %s is malformed (remove it to start without it): %w", path, err)
	}
	return ks, nil
}

// restoreLife applies the unexpired items of ks locally at once — a
// retired session is dropped and refused, a cut one cut, here and in
// whatever this node loads from the store or receives from a peer (see
// heldLife) — and keeps them again for the paths that write and publish
// them when the transport works.
func (n *Node) restoreLife(ks []keptLife) {
	now := n.cfg.Now()
	var toQ, toSQ, all []item
	for _, k := range ks {
		if !k.expires.After(now) {
			continue
		}
		it := item{id: k.id, op: opRetire, expires: k.expires}
		bus, store := k.bus, k.store
		if !k.retire {
			it.op, it.until, it.child, it.restored = opCut, k.until, k.child, true
			// The child that would have told broadcast peers is lost.
			bus = bus || n.cfg.Mode == Broadcast
		}
		if it.op == opRetire {
			n.retired.add(it.id, now)
			n.cfg.Cache.Retire(it.id, session.OriginPeer)
		} else {
			n.cfg.Cache.Cut(it.id, it.until)
			n.noteRecut(it.id, it.until)
		}
		all = append(all, it)
		switch {
		case n.sq == nil:
			toQ = append(toQ, it)
		default:
			if bus {
				toQ = append(toQ, it)
			}
			if store {
				toSQ = append(toSQ, it)
			}
		}
	}
	n.holdLife(all, now)
	if len(toQ) > 0 {
		n.lifeq.push(toQ, now)
	}
	if len(toSQ) > 0 {
		n.lifesq.push(toSQ, now)
	}
}

// keepQueued keeps the retirements and cuts still queued when the node
// closes, for the lifecycle file (Close).
func (n *Node) keepQueued() {
	done, cancel := context.WithCancel(context.Background())
	cancel()
	for _, p := range []struct {
		q *queue
		l *laterLife
	}{{n.q, n.lifeq}, {n.sq, n.lifesq}} {
		if p.q == nil {
			continue
		}
		batch, _ := p.q.pop(done, nil, len(p.q.items))
		n.keepLifecycle(p.l, batch)
	}
}

// holdLife remembers its (retirements and cuts that may not have reached
// the farm), until they expire, for heldLife.
func (n *Node) holdLife(its []item, now time.Time) {
	if n.held == nil || len(its) == 0 {
		return
	}
	slim := make([]item, len(its))
	for i, it := range its {
		slim[i] = item{id: it.id, op: it.op, until: it.until, expires: it.expires}
	}
	n.held.push(slim, now)
	n.heldAny.Store(true)
}

// heldLife reports what this node retired or cut of id that may not have
// reached the farm: a retirement, or a cut to until. A record of id that
// this node loads from the store, or receives from a peer, was written
// before it, and must not bring the session back whole.
func (n *Node) heldLife(id session.ID, now time.Time) (retired bool, until time.Time, ok bool) {
	if n.held == nil || !n.heldAny.Load() {
		return false, time.Time{}, false
	}
	it, ok := n.held.get(id, now)
	if !ok {
		return false, time.Time{}, false
	}
	return it.op == opRetire, it.until, true
}

// holdBack applies heldLife to rec, a record of id from the store or a
// peer: nil if id was retired or its cut is over, else rec cut (a copy).
func (n *Node) holdBack(id session.ID, rec *session.Record, now time.Time) *session.Record {
	retired, until, ok := n.heldLife(id, now)
	switch {
	case !ok || rec == nil:
		return rec
	case retired || !until.After(now):
		return nil
	case rec.Expires.After(until):
		cp := *rec
		cp.Expires = until
		return &cp
	}
	return rec
}

// writeFileAtomic writes data to path through a temporary file, renamed
// over it, mode 0600, fsynced with its directory.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err == nil {
		_, err = f.Write(data)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return err
	}
	syncDir(filepath.Dir(path))
	return nil
}

// syncDir fsyncs directory dir, so that a file created or renamed there
// survives a power loss; it does what it can.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
