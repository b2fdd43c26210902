//go:build !unix

package probe

// openFileLimit returns 0: the number of sockets is not limited by a count
// of open files here.
func openFileLimit() uint64 { return 0 }
