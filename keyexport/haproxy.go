package keyexport

import (
	"context"
	"encoding/base64"
	"fmt"

	"github.com/tlsfarm/tlsfarm/ticket"
)

// haproxyRingSize is the number of keys HAProxy holds for a tls-ticket-keys
// file (its TLS_TICKETS_NO build option, 3 in HAProxy's default build and
// in Debian's): one previous key, the key that encrypts and the next key.
const haproxyRingSize = 3

// haproxyKeys returns the farm keys of s in the order of a tls-ticket-keys
// file, oldest first: Previous oldest first, then Current, then Next.
// HAProxy keeps the last haproxyRingSize keys of a file and encrypts with
// the penultimate, so the file's last key is the pre-staged next key and
// the one before it encrypts. If s has fewer than haproxyRingSize keys,
// filler keys come first. The caller wipes the slice after use.
func haproxyKeys(s *Set) []ticket.Key { return haproxyKeysN(s, 0) }

// haproxyKeysN returns haproxyKeys(s) padded in front with further filler
// keys to at least n keys. It makes one copy of the keys, in the slice it
// returns, so that wiping that slice wipes every copy.
func haproxyKeysN(s *Set, n int) []ticket.Key {
	prev, next := s.byRole(Previous), s.byRole(Next)
	defer func() {
		clear(prev)
		clear(next)
	}()
	own := len(prev) + 2 // the set's keys, with a filler for a missing next key
	file := max(own, haproxyRingSize)
	keys := make([]ticket.Key, 0, max(file, n))
	for i := cap(keys) - 1; i >= file; i-- {
		keys = append(keys, s.filler(i))
	}
	for i := file - own; i >= 1; i-- {
		keys = append(keys, s.filler(i))
	}
	for i := len(prev) - 1; i >= 0; i-- {
		keys = append(keys, prev[i].Key)
	}
	keys = append(keys, s.current().Key)
	if len(next) > 0 {
		keys = append(keys, next[0].Key)
	} else {
		keys = append(keys, s.filler(0))
	}
	if keyCopies != nil {
		keyCopies(keys)
	}
	return keys
}

// haproxyFile returns the content of a tls-ticket-keys file for s: one
// base64 line per 80-byte key (see HAProxyKey), in the order of haproxyKeys.
// The caller wipes it after use.
func haproxyFile(s *Set) []byte {
	keys := haproxyKeys(s)
	defer clear(keys)
	// Sized at once: a buffer that grew would leave copies of keys behind.
	out := make([]byte, 0, len(keys)*(base64.StdEncoding.EncodedLen(len(Key80{}))+1))
	for _, k := range keys {
		b := HAProxyKey(k)
		out = base64.StdEncoding.AppendEncode(out, b[:])
		out = append(out, '\n')
		clear(b[:])
	}
	return out
}

// An HAProxyTarget writes a Set to File in HAProxy's tls-ticket-keys
// format, so that HAProxy started or reloaded later reads it; if Socket is
// set, it then pushes the new keys to the running HAProxy through its
// runtime API (see HAProxyRuntime), with no reload.
type HAProxyTarget struct {
	File   string // the path, exactly as haproxy.cfg's tls-ticket-keys names it
	Socket string // the runtime API's socket: a path, or a loopback host:port (see HAProxyRuntime.Socket); "" for none
}

// String returns "haproxy:" and the file, with the socket if any.
func (t *HAProxyTarget) String() string {
	if t.Socket != "" {
		return "haproxy:" + t.File + ",socket=" + t.Socket
	}
	return "haproxy:" + t.File
}

// Export writes the file, then brings the running HAProxy's keys in line
// with it.
func (t *HAProxyTarget) Export(ctx context.Context, s *Set) error {
	data := haproxyFile(s)
	defer clear(data)
	if err := writeFiles([]file{{Path: t.File, Data: data}}); err != nil {
		return fmt.Errorf("haproxy key file: %w", err)
	}
	if t.Socket == "" {
		return nil
	}
	rt := &HAProxyRuntime{Socket: t.Socket, ID: t.File}
	if _, err := rt.Sync(ctx, s); err != nil {
		return fmt.Errorf("haproxy runtime API: %w", err)
	}
	return nil
}
