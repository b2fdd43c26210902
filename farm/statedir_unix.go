//go:build unix

package farm

import (
	"fmt"
	"path/filepath"
	"syscall"
)

// checkStateDir reports an error if the directory of the file at path
// cannot be written by this process: the revocation file and the files
// beside it are written there by temporary file and rename, and the
// journal is created there. A directory that is missing, read-only (a
// read-only file system, as systemd's ProtectSystem=strict makes every
// path not listed in ReadWritePaths or StateDirectory) or not writable by
// this user would leave revocations in memory only, each write failing
// with a warning; Join and CheckRevocationFile refuse it at once instead.
// It creates nothing.
func checkStateDir(path string) error {
	dir := filepath.Dir(path)
	const wOK, xOK = 0x2, 0x1
	if err := syscall.Access(dir, wOK|xOK); err != nil {
		return fmt.Errorf("farm: the directory of the revocation file %s cannot be written (%v): revocations could not be kept across a restart", path, err)
	}
	return nil
}
