package keyexport

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/tlsfarm/tlsfarm/ticket"
)

// NginxFileCount is how many key files an nginx target writes for a farm
// that keeps keep previous keys: the current key, the next key and keep
// previous keys.
func NginxFileCount(keep int) int { return keep + 2 }

// NginxFileName returns the name of the i-th key file in an nginx target's
// directory: "ticket-0.key" for the key that encrypts, "ticket-1.key" for
// the next key, then the previous keys.
func NginxFileName(i int) string { return "ticket-" + strconv.Itoa(i) + ".key" }

// NginxStaleFiles returns the paths of the key files in dir that an nginx
// target keeping keep previous keys no longer writes: "ticket-N.key" with
// N at least NginxFileCount(keep), left there when the farm's keep was
// higher. nginx.conf may still list them, and nginx would go on decrypting
// with the keys they held, which the farm dropped; so NginxTarget.Export
// overwrites them with random keys, and the agent warns about them at
// start. They are sorted by N.
func NginxStaleFiles(dir string, keep int) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var ns []int
	for _, e := range entries {
		num, ok := strings.CutPrefix(e.Name(), "ticket-")
		if !ok {
			continue
		}
		if num, ok = strings.CutSuffix(num, ".key"); !ok {
			continue
		}
		// Only the names this package makes: no sign, no leading zero.
		n, err := strconv.Atoi(num)
		if err != nil || n < NginxFileCount(keep) || NginxFileName(n) != e.Name() {
			continue
		}
		ns = append(ns, n)
	}
	slices.Sort(ns)
	var out []string
	for _, n := range ns {
		out = append(out, filepath.Join(dir, NginxFileName(n)))
	}
	return out, nil
}

// nginxKeys returns the farm keys of s in the order of an nginx target's
// files: Current (nginx encrypts with the first key it is given), Next,
// then Previous newest first, padded with filler keys up to
// NginxFileCount(s.Keep) so that the set of files never changes. The
// caller wipes the slice after use; nginxKeys wipes the other copies it
// makes (those of byRole were left behind, unlike haproxyKeysN's).
func nginxKeys(s *Set) []ticket.Key {
	n := NginxFileCount(s.Keep)
	prev, next := s.byRole(Previous), s.byRole(Next)
	defer func() {
		clear(prev)
		clear(next)
	}()
	keys := make([]ticket.Key, 0, n)
	keys = append(keys, s.current().Key)
	if len(next) > 0 {
		keys = append(keys, next[0].Key)
	} else {
		keys = append(keys, s.filler(0))
	}
	for _, k := range prev {
		if len(keys) < n {
			keys = append(keys, k.Key)
		}
	}
	for i := 1; len(keys) < n; i++ {
		keys = append(keys, s.filler(i))
	}
	if keyCopies != nil {
		keyCopies(keys)
	}
	return keys
}

// An NginxTarget writes a Set as nginx's 80-byte ssl_session_ticket_key
// files, one per key, in Dir: NginxFileCount(s.Keep) files named by
// NginxFileName, the key that encrypts first, padded with Filler keys so
// that the set of files never changes.
type NginxTarget struct {
	Dir string // must pass CheckDir
}

// String returns "nginx:" and the directory.
func (t *NginxTarget) String() string { return "nginx:" + t.Dir }

// Export writes the Set's files, all or none: each is staged before the
// first is renamed into place. Key files beyond NginxFileCount(s.Keep)
// (NginxStaleFiles) are overwritten in the same set with random keys, which
// decrypt no ticket: an nginx.conf that still lists them keeps loading, and
// no longer trusts keys the farm dropped.
//
// The files are renamed in the order nginxRenameOrder gives, so that an
// nginx that reloads between two renames of a routine rotation still holds
// every key the farm uses: the key that encrypted until the rotation, the
// key that encrypts from it and every previous key the farm keeps.
func (t *NginxTarget) Export(_ context.Context, s *Set) error {
	stale, err := NginxStaleFiles(t.Dir, s.Keep)
	if err != nil {
		return fmt.Errorf("nginx key files: %w", err)
	}
	keys := nginxKeys(s)
	files := make([]file, 0, len(keys)+len(stale))
	for _, p := range stale {
		var b [80]byte
		rand.Read(b[:])
		files = append(files, file{Path: p, Data: b[:]})
	}
	for _, i := range nginxRenameOrder(len(keys)) {
		b := NginxKey(keys[i])
		files = append(files, file{Path: filepath.Join(t.Dir, NginxFileName(i)), Data: b[:]})
	}
	defer func() {
		for _, f := range files {
			clear(f.Data)
		}
		clear(keys)
	}()
	if err := writeFiles(files); err != nil {
		return fmt.Errorf("nginx key files: %w", err)
	}
	return nil
}

// nginxRenameOrder returns the order in which an nginx target replaces its
// n files: the previous keys' files from the oldest to the newest, then
// ticket-0.key (the key that encrypts), then ticket-1.key (the staged key).
// At a rotation file 0 gets the key of file 1, file 2 that of file 0, and
// every later file that of the one before it; so in this order every state
// between two renames holds the old set's current and next keys and the
// previous keys the new set keeps: only the key that the rotation drops,
// and the new staged key, which nothing encrypts with yet, may be missing.
// In the order of the files, ticket-0.key went first, and until the third
// rename no file held the key that had encrypted until the rotation (the
// one lagging servers still encrypt with): an nginx that read its files
// then (reloaded by anyone, or started after the agent was killed between
// two renames) refused every ticket of the last interval until it read
// them again.
func nginxRenameOrder(n int) []int {
	order := make([]int, 0, n)
	for i := n - 1; i >= 2; i-- {
		order = append(order, i)
	}
	for i := range min(n, 2) {
		order = append(order, i)
	}
	return order
}

// nginxConfig returns the ssl_session_ticket_key lines that make nginx read
// an nginx target's files in dir, for a farm that keeps keep previous keys.
func nginxConfig(dir string, keep int) string {
	var out string
	for i := range NginxFileCount(keep) {
		out += "ssl_session_ticket_key " + filepath.Join(dir, NginxFileName(i)) + ";\n"
	}
	return out
}
