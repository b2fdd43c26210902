package keyexport

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// tempPrefix starts the names of the temporary files this package makes, so
// that it can tell them apart from anything else in a directory.
const tempPrefix = ".tlsfarm-tmp-"

// CheckDir reports whether dir is a safe place for key files: an existing
// directory (not a symbolic link to one), owned by this process's user or by
// root, that neither its group nor other users can write to, sticky bit or
// not (in a directory like /tmp another user could take a key file's name
// first, with a file of theirs that a terminator would read). Every
// directory above it, up to the root, must be owned by this user or by root
// and writable by no one else unless it has the sticky bit (as /tmp has):
// otherwise another user could rename dir away and put a directory of theirs
// in its place between this check and a write. A symbolic link above dir
// must be owned by this user or by root, and is checked as the directories
// it leads to.
func CheckDir(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("%s is a symbolic link: give the directory it points to", dir)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		if fi.Mode()&fs.ModeSticky != 0 {
			return fmt.Errorf("%s can be written by other users (mode %v), who could take a key file's name first, with a file of theirs (the write then fails, and a terminator reading the directory would use their key): the sticky bit protects only the directories above the key directory; use a directory of mode 0700 or 0750", dir, fi.Mode())
		}
		return fmt.Errorf("%s can be written by its group or by other users (mode %v): use a directory of mode 0700 or 0750", dir, fi.Mode().Perm())
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s is owned by another user (uid %d)", dir, st.Uid)
	}
	return checkParents(dir)
}

// checkParents checks the directories above dir for CheckDir.
func checkParents(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	return checkAncestors(dir, filepath.Dir(abs))
}

// checkAncestors checks p and every directory above it, for CheckDir of
// dir. A symbolic link on the way (/var/run, a link to /run on most
// systems) is followed: it is as safe as where it leads, if only this user
// or root can replace it. Its own directory is checked next in this walk;
// its owner matters where that directory is sticky.
func checkAncestors(dir, p string) error {
	for ; ; p = filepath.Dir(p) {
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 && int(st.Uid) != os.Geteuid() {
			return fmt.Errorf("%s, above %s, is owned by another user (uid %d), who could replace the key directory", p, dir, st.Uid)
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			real, err := filepath.EvalSymlinks(p)
			if err != nil {
				return err
			}
			if err := checkAncestors(dir, real); err != nil { // real holds no link
				return err
			}
		case !fi.IsDir():
			return fmt.Errorf("%s is not a directory", p)
		case fi.Mode().Perm()&0o022 != 0 && fi.Mode()&fs.ModeSticky == 0:
			return fmt.Errorf("%s, above %s, can be written by its group or by other users (mode %v), who could replace the key directory: use a path whose every directory only its owner can write to, or one with the sticky bit", p, dir, fi.Mode().Perm())
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// A file is one file of a set to write: its path and its content.
type file struct {
	Path string
	Data []byte
}

// writeFiles writes files as one set. Every file must be in a directory that
// passes CheckDir, and no path may be a symbolic link (this package never
// makes one, so one found there was put by someone else). Each file is
// first written in full to a new temporary file of mode 0600 beside it and
// synced; only when every file is staged are they renamed into place, in
// the order of files, and then each directory is synced. If staging fails, nothing is renamed and
// the temporary files are removed: the set in place stays whole. writeFiles
// does not clear the files' data.
func writeFiles(files []file) (err error) {
	dirs := map[string]bool{}
	for _, f := range files {
		dir := filepath.Dir(f.Path)
		if !dirs[dir] {
			if err := CheckDir(dir); err != nil {
				return err
			}
			dirs[dir] = true
		}
		if fi, err := os.Lstat(f.Path); err == nil {
			if fi.Mode()&fs.ModeSymlink != 0 {
				return fmt.Errorf("%s is a symbolic link that tlsfarm did not make: refusing to write through it", f.Path)
			}
			if !fi.Mode().IsRegular() {
				return fmt.Errorf("%s is not a regular file", f.Path)
			}
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	temps := make([]string, 0, len(files))
	defer func() {
		if err != nil {
			for _, t := range temps {
				os.Remove(t)
			}
		}
	}()
	for _, f := range files {
		t, err := writeTemp(filepath.Dir(f.Path), f.Data)
		if t != "" {
			temps = append(temps, t)
		}
		if err != nil {
			return fmt.Errorf("writing %s: %w", f.Path, err)
		}
	}
	for i, f := range files {
		if err := os.Rename(temps[i], f.Path); err != nil {
			// Rename within a directory fails only when the file system
			// does; the files renamed so far are whole files of the new set.
			return fmt.Errorf("replacing %s: %w", f.Path, err)
		}
		if afterRename != nil {
			afterRename(f.Path)
		}
	}
	temps = nil
	for dir := range dirs {
		if err := syncDir(dir); err != nil {
			return err
		}
	}
	return nil
}

// afterRename, if not nil, is called by writeFiles after each file is
// renamed into place (tests look at the states in between).
var afterRename func(path string)

// writeTemp writes data to a new temporary file of mode 0600 in dir, syncs
// it and returns its name. It never follows a symbolic link: the name is
// new and random, and created exclusively.
func writeTemp(dir string, data []byte) (string, error) {
	var rnd [8]byte
	rand.Read(rnd[:])
	name := filepath.Join(dir, tempPrefix+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return "", err
	}
	// The umask cannot widen 0600, but a file system may have its own idea.
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return name, err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return name, err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return name, err
	}
	return name, f.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return err
	}
	return nil
}

// RemoveStaleTemps removes the temporary files that an interrupted export
// left in dir: regular files whose names start with this
// package's temporary prefix. It reports how many it removed.
func RemoveStaleTemps(dir string) int {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tempPrefix) && e.Type().IsRegular() {
			if os.Remove(filepath.Join(dir, e.Name())) == nil {
				n++
			}
		}
	}
	return n
}
