package farm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"

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
// written atomically by Close and whenever the lifecycle file is saved
// (lifeSaver), and removed once nothing in the ring is within its
// session's life.
const (
	sentFileSuffix  = ".sent"
	sentFileContext = "sent-lifecycle"
	sentFileVersion = 1
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
	if len(body) == 0 {
		return nil, errors.New("empty body")
	}
	if body[0] != sentFileVersion {
		return nil, fmt.Errorf("unknown version %d", body[0])
	}
	body = body[1:]
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

// saveSent writes the items of Node.sent still within their session's
// life to the sent file, if they changed since the last write, or removes
// the file when there are none. It never logs an ID.
func (n *Node) saveSent() {
	f := &n.lf
	if f.sentPath == "" || n.sent == nil {
		return
	}
	its := n.sent.live(n.cfg.Now())
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(its) == 0 {
		if f.sentOnDisk {
			if err := os.Remove(f.sentPath); err != nil && !errors.Is(err, os.ErrNotExist) {
				if !f.sentFailed {
					n.log.Warn("farm: cannot remove the sent retirements and cuts file", "err", err)
				}
				f.sentFailed = true
				return
			}
			f.sentOnDisk, f.sentSaved = false, nil
		}
		return
	}
	body := encodeSentFile(its)
	if f.sentOnDisk && bytes.Equal(body, f.sentSaved) {
		return
	}
	hdr := header{typ: valTombstone, time: n.cfg.Now(), sender: n.instance, farm: n.cfg.Farm}
	if err := writeFileAtomic(f.sentPath, n.keys.seal(nil, hdr, body, []byte(sentFileContext))); err != nil {
		if !f.sentFailed {
			n.log.Warn("farm: cannot persist the sent retirements and cuts; a restart forgets them", "err", err)
		}
		f.sentFailed = true
		return
	}
	f.sentOnDisk, f.sentSaved, f.sentFailed = true, body, false
}

// readSent reads the sent file, if there is one, into Node.sent (the
// items still within their session's life, the last QueueSize of them).
// A file that does not open under the farm's secrets, or does not decode,
// is logged and ignored, unlike the lifecycle file: everything in it
// reached the farm, and only a later re-send is lost (as it would be if
// the file were gone, which no seal can prevent); the next save replaces
// it.
func (n *Node) readSent() {
	path := n.lf.sentPath
	if path == "" || n.sent == nil {
		return
	}
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return
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
		return
	}
	// No bound on the time it was sealed, as for the lifecycle file.
	_, body, err := n.keys.open(raw, n.cfg.Farm, valTombstone, []byte(sentFileContext), n.cfg.Now(), 0, 0)
	if err != nil {
		n.log.Warn("farm: the sent retirements and cuts file does not open under the farm's secrets; they will not be re-sent", "file", path, "err", err)
		return
	}
	its, err := decodeSentFile(body)
	if err != nil {
		n.log.Warn("farm: the sent retirements and cuts file is malformed; they will not be re-sent", "file", path, "err", err)
		return
	}
	n.sent.restore(its, n.cfg.Now())
}
