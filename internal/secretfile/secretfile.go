// Package secretfile reads files that hold secrets (the farm's secret, the
// admin bearer token) and refuses those that others could read.
package secretfile

import (
	"fmt"
	"io"
	"os"
)

// Read returns the contents of the file at path. It refuses, before
// reading, a file whose mode lets its group or others read, write or run
// it, with an error that names the path, its mode and the chmod that fixes
// it. Errors from the file system (a missing file, no permission) are
// returned as they are, so errors.Is(err, fs.ErrNotExist) works.
//
// A file longer than MaxSize is refused, with an error that names it and
// shows none of its contents: no secret file is nearly that long, and a
// huge one would take the memory of a start or a reload.
//
// Read does not check the kind of file: a pipe (such as a shell's
// <(command)) is read like a regular file. A caller that needs a regular
// file checks that itself.
func Read(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%s is accessible to group or others (mode %04o); run chmod 600 %s", path, perm, path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxSize {
		clear(data)
		return nil, fmt.Errorf("%s is larger than %d KiB: not a secret file", path, MaxSize>>10)
	}
	return data, nil
}

// MaxSize is the longest file Read accepts, in bytes.
const MaxSize = 64 << 10
