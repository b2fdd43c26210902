package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A -config that names a named pipe is refused at start and on SIGHUP:
// reading it would block until something writes to it, and a reload stuck
// so would hold up the signal loop, SIGTERM included.
func TestConfigFileMustBeRegular(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fifo := filepath.Join(dir, "pipe.yaml")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skip(err)
	}
	code, _, stderr := runCmd(t, []string{"serve", "-config", fifo, "-admin", "off"})
	if code != 1 || !strings.Contains(stderr, "not a regular file") {
		t.Errorf("serve -config FIFO: exit %d, %q", code, stderr)
	}

	conf := writeFile(t, filepath.Join(dir, "tlsfarm.yaml"), "listeners:\n  - address: 127.0.0.1:0\n", 0o644)
	p := serveProc(t, []string{"-config", conf})
	if err := os.Remove(conf); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(conf, 0o600); err != nil {
		t.Fatal(err)
	}
	p.cmd.Process.Signal(syscall.SIGHUP)
	rejected := p.waitLog("reload rejected; the running configuration is unchanged", 5*time.Second)
	if !strings.Contains(rejected["err"].(string), "not a regular file") {
		t.Errorf("rejection says %v", rejected["err"])
	}
	p.stop()
}
