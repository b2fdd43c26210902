package secretfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRead(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "token")
	if err := os.WriteFile(path, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := Read(path); err != nil || string(b) != "s3cret\n" {
		t.Fatalf("Read of a 0600 file = %q, %v", b, err)
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o620, 0o601} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		b, err := Read(path)
		if err == nil {
			t.Errorf("Read of a %04o file succeeded", mode)
			continue
		}
		if b != nil || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("Read of a %04o file returned %q with %v: the secret leaked", mode, b, err)
		}
		for _, want := range []string{path, "accessible to group or others", "chmod 600"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("Read of a %04o file: error %q does not mention %q", mode, err, want)
			}
		}
	}
	if _, err := Read(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Read of a missing file: %v, want fs.ErrNotExist", err)
	}
}

// TestReadSizeCap: a file longer than MaxSize is refused, naming it; one
// of MaxSize bytes is read. Before, Read took any size into memory.
func TestReadSizeCap(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "big")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(64 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if b, err := Read(path); err == nil || b != nil || !strings.Contains(err.Error(), path+" is larger than 64 KiB") {
		t.Errorf("Read of a 64 MiB file: %d bytes, %v", len(b), err)
	}
	if err := os.Truncate(path, MaxSize); err != nil {
		t.Fatal(err)
	}
	if b, err := Read(path); err != nil || len(b) != MaxSize {
		t.Errorf("Read of a MaxSize file: %d bytes, %v", len(b), err)
	}
}
