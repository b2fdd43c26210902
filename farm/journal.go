package farm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// A journal is a file of frames appended one write (and one fsync) at a
// time: the sent journal (sentfile.go) and the pending revocations
// journal (durable.go) share this framing. A frame is its length (four
// bytes, big-endian) and then an envelope sealed with the farm's secret
// under the journal's own context. A write cut short by a crash leaves a
// last frame shorter than its length says (nextFrame); what each journal
// makes of that, and of a frame that does not open, is its own.

// appendFrame appends to dst a journal frame of body sealed under
// context.
func (n *Node) appendFrame(dst, body []byte, context string) []byte {
	hdr := header{typ: valTombstone, time: n.cfg.Now(), sender: n.instance, farm: n.cfg.Farm}
	at := len(dst)
	dst = append(dst, 0, 0, 0, 0)
	dst = n.keys.seal(dst, hdr, body, []byte(context))
	binary.BigEndian.PutUint32(dst[at:], uint32(len(dst)-at-4))
	return dst
}

// nextFrame splits raw, a journal's bytes, into its first frame's sealed
// envelope and the rest. It reports false if raw is cut short of a whole
// frame: fewer than four bytes, or fewer than the length announces.
func nextFrame(raw []byte) (frame, rest []byte, ok bool) {
	if len(raw) < 4 {
		return nil, raw, false
	}
	l := uint64(binary.BigEndian.Uint32(raw))
	if l > uint64(len(raw)-4) {
		return nil, raw, false
	}
	return raw[4 : 4+l], raw[4+l:], true
}

// writeJournal appends buf (whole frames) to the journal open at *jf and
// fsyncs it; with none open (*jf nil) it first creates the journal at
// path, mode 0600, dropping what a file there held, and fsyncs its
// directory: buf must then begin with the journal's first frame. An error
// closes the journal (*jf nil): a partial frame may have been written,
// which ends what the journal gives back, so the caller must not append
// to that file again (it rewrites what the journal extends instead).
func writeJournal(jf **os.File, path string, buf []byte) error {
	created := false
	if *jf == nil {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
		if err != nil {
			return err
		}
		*jf, created = f, true
	}
	_, err := (*jf).Write(buf)
	if err == nil {
		err = (*jf).Sync()
	}
	if err != nil {
		closeJournalFile(jf)
		return err
	}
	if created {
		syncDir(filepath.Dir(path))
	}
	return nil
}

// closeJournalFile closes the journal open at *jf, if any.
func closeJournalFile(jf **os.File) {
	if *jf != nil {
		(*jf).Close()
		*jf = nil
	}
}

// afterVersion returns what follows the version byte that begins body, a
// node's own file or journal frame, or an error if body is empty or of
// another version than v.
func afterVersion(body []byte, v byte) ([]byte, error) {
	if len(body) == 0 {
		return nil, errors.New("empty body")
	}
	if body[0] != v {
		return nil, fmt.Errorf("unknown version %d", body[0])
	}
	return body[1:], nil
}
