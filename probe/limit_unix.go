//go:build unix

package probe

import "syscall"

// openFileLimit returns the most files the process may have open
// (RLIMIT_NOFILE, which Go raises to the hard limit at start), or 0 if
// unknown.
func openFileLimit() uint64 {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0
	}
	return uint64(l.Cur)
}
