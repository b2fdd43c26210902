package keyexport

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteFilesModeAndContent(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "a.key")
	if err := os.WriteFile(p, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeFiles([]file{{p, []byte("new")}, {filepath.Join(dir, "b.key"), []byte("bbb")}}); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"a.key": "new", "b.key": "bbb"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", name, fi.Mode().Perm())
		}
		if b, _ := os.ReadFile(filepath.Join(dir, name)); string(b) != want {
			t.Errorf("%s holds %q, want %q", name, b, want)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("%d entries in the directory, want 2 (no temporary files left)", len(entries))
	}
}

// TestWriteFilesRefuses checks each refusal, and that a refused set leaves
// every file of the set in place untouched.
func TestWriteFilesRefuses(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string) (files []file)
		err   string
	}{
		{"symlink at a file", func(t *testing.T, dir string) []file {
			os.WriteFile(filepath.Join(dir, "elsewhere"), []byte("x"), 0o600)
			os.Symlink(filepath.Join(dir, "elsewhere"), filepath.Join(dir, "b.key"))
			return []file{{filepath.Join(dir, "a.key"), []byte("new")}, {filepath.Join(dir, "b.key"), []byte("new")}}
		}, "symbolic link"},
		{"group-writable directory", func(t *testing.T, dir string) []file {
			sub := filepath.Join(dir, "open")
			os.Mkdir(sub, 0o700)
			os.Chmod(sub, 0o770)
			return []file{{filepath.Join(dir, "a.key"), []byte("new")}, {filepath.Join(sub, "b.key"), []byte("new")}}
		}, "group or by other users"},
		{"world-writable directory", func(t *testing.T, dir string) []file {
			sub := filepath.Join(dir, "open")
			os.Mkdir(sub, 0o700)
			os.Chmod(sub, 0o777)
			return []file{{filepath.Join(sub, "b.key"), []byte("new")}}
		}, "group or by other users"},
		// Unlike a directory above the key directory, a key directory
		// like /tmp is refused: another user could create a key file's
		// name first (one of nginx's set, before its first export), with
		// a file of theirs: the export then fails, and a terminator that
		// reads the directory uses their key.
		{"sticky world-writable directory", func(t *testing.T, dir string) []file {
			sub := filepath.Join(dir, "sticky")
			os.Mkdir(sub, 0o700)
			// Not os.Chmod(sub, 0o1777): in a FileMode, 0o1000 is no
			// mode bit, so that would make a plain 0777 directory.
			if err := os.Chmod(sub, 0o777|os.ModeSticky); err != nil {
				t.Fatal(err)
			}
			if fi, err := os.Stat(sub); err != nil || fi.Mode()&os.ModeSticky == 0 || fi.Mode().Perm() != 0o777 {
				t.Fatalf("the directory is not sticky and world-writable: %v, %v", fi.Mode(), err)
			}
			return []file{{filepath.Join(sub, "b.key"), []byte("new")}}
		}, "the sticky bit protects only the directories above the key directory"},
		{"world-writable parent directory", func(t *testing.T, dir string) []file {
			keys := filepath.Join(dir, "open", "keys")
			os.MkdirAll(keys, 0o700)
			os.Chmod(filepath.Dir(keys), 0o777)
			return []file{{filepath.Join(dir, "a.key"), []byte("new")}, {filepath.Join(keys, "b.key"), []byte("new")}}
		}, "above"},
		{"directory is a symlink", func(t *testing.T, dir string) []file {
			real := filepath.Join(dir, "real")
			os.Mkdir(real, 0o700)
			os.Symlink(real, filepath.Join(dir, "link"))
			return []file{{filepath.Join(dir, "link", "b.key"), []byte("new")}}
		}, "symbolic link"},
		{"not a regular file", func(t *testing.T, dir string) []file {
			os.Mkdir(filepath.Join(dir, "b.key"), 0o700)
			return []file{{filepath.Join(dir, "a.key"), []byte("new")}, {filepath.Join(dir, "b.key"), []byte("new")}}
		}, "not a regular file"},
		{"missing directory", func(t *testing.T, dir string) []file {
			return []file{{filepath.Join(dir, "a.key"), []byte("new")}, {filepath.Join(dir, "nope", "b.key"), []byte("new")}}
		}, "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			os.Chmod(dir, 0o700)
			a := filepath.Join(dir, "a.key")
			os.WriteFile(a, []byte("old"), 0o600)
			err := writeFiles(tt.setup(t, dir))
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("err = %v, want one saying %q", err, tt.err)
			}
			if b, _ := os.ReadFile(a); string(b) != "old" {
				t.Errorf("a refused set changed a.key to %q", b)
			}
			if b, _ := os.ReadFile(filepath.Join(dir, "elsewhere")); len(b) > 0 && string(b) != "x" {
				t.Errorf("wrote through the symlink")
			}
		})
	}
}

func TestRemoveStaleTemps(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, tempPrefix+"0123"), []byte("k"), 0o600)
	os.WriteFile(filepath.Join(dir, "ticket-0.key"), []byte("k"), 0o600)
	if n := RemoveStaleTemps(dir); n != 1 {
		t.Errorf("removed %d files, want 1", n)
	}
	if _, err := os.Stat(filepath.Join(dir, "ticket-0.key")); err != nil {
		t.Error("removed a key file")
	}
}

// TestCheckDirParents checks that CheckDir refuses a key directory that a
// directory above it lets another user replace, and accepts one below a
// sticky directory (as t.TempDir's are, below /tmp).
func TestCheckDirParents(t *testing.T) {
	base := t.TempDir()
	os.Chmod(base, 0o700)
	mk := func(path string, mode os.FileMode) string {
		t.Helper()
		if err := os.MkdirAll(path, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		return path
	}
	keys := func(parent string) string { return mk(filepath.Join(parent, "keys"), 0o700) }
	ok := map[string]string{
		"private parents": keys(mk(filepath.Join(base, "a", "b"), 0o755)),
		"sticky parent":   keys(mk(filepath.Join(base, "sticky"), 0o777|os.ModeSticky)),
	}
	bad := map[string]string{
		"world-writable parent":      keys(mk(filepath.Join(base, "open"), 0o777)),
		"group-writable grandparent": keys(filepath.Join(mk(filepath.Join(base, "group"), 0o770), "mid")),
	}
	real := keys(mk(filepath.Join(base, "real"), 0o755))
	if err := os.Symlink(filepath.Dir(real), filepath.Join(base, "link")); err != nil {
		t.Fatal(err)
	}
	ok["symlink parent, to private directories"] = filepath.Join(base, "link", "keys")
	open := keys(mk(filepath.Join(base, "open2"), 0o777))
	if err := os.Symlink(filepath.Dir(open), filepath.Join(base, "openlink")); err != nil {
		t.Fatal(err)
	}
	bad["symlink parent, to a world-writable directory"] = filepath.Join(base, "openlink", "keys")
	if os.Geteuid() == 0 {
		// In a sticky directory, a link's owner can replace it.
		sticky := mk(filepath.Join(base, "sticky2"), 0o777|os.ModeSticky)
		l := filepath.Join(sticky, "l")
		if err := os.Symlink(filepath.Dir(real), l); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(l, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		bad["symlink parent owned by another user, in a sticky directory"] = filepath.Join(l, "keys")
		other := mk(filepath.Join(base, "other"), 0o755)
		if err := os.Chown(other, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		bad["parent owned by another user"] = keys(other)
	} else {
		t.Log("not root: cannot make a directory owned by another user; that case is not checked")
	}
	for name, dir := range ok {
		if err := CheckDir(dir); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	for name, dir := range bad {
		if err := CheckDir(dir); err == nil || !strings.Contains(err.Error(), "above "+dir) {
			t.Errorf("%s: err = %v, want one naming a directory above %s", name, err, dir)
		}
	}
}
