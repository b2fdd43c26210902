package farm

import (
	"fmt"
	"log/slog"
	"os"
	"time"
)

// CheckRevocationFile reports whether a node of farm, holding secrets,
// could start on the revocation file at path (see Config.RevocationFile):
// it opens, as Join does, the file and its journal and the lifecycle file
// beside it, each if it exists, checks that their directory can be written
// by this process, and returns the error for which Join would fail. A file that does not exist is no error, nor is a sent file that
// does not open, which Join logs and ignores.
//
// CheckRevocationFile only reads: it creates, modifies, removes and locks
// none of the files, and holds none of them open when it returns. The
// error names the file; it holds no key material.
func CheckRevocationFile(farm string, secrets []Secret, path string) error {
	if path == "" {
		return nil
	}
	if err := checkStateDir(path); err != nil {
		return err
	}
	keys, err := deriveFarmKeys(farm, secrets)
	if err != nil {
		return err
	}
	cfg := Config{Farm: farm, Secrets: secrets, RevocationFile: path, Now: time.Now}
	for _, p := range []string{path, revJournalPath(path), lifePath(&cfg)} {
		// Reading a named pipe would block; Join refuses one too.
		if fi, err := os.Stat(p); err == nil && !fi.Mode().IsRegular() {
			return fmt.Errorf("farm: %s is not a regular file", p)
		}
	}
	n := &Node{cfg: cfg, keys: keys, log: slog.New(slog.DiscardHandler)}
	n.lf.path = lifePath(&cfg)
	if _, err := n.readLife(); err != nil {
		return err
	}
	if _, _, err := n.readRevocations(path); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}
