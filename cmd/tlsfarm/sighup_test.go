package main

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/config"
)

// TestSIGHUPWhileLoadingDoesNotKill: a SIGHUP that arrives while serve
// loads its configuration (systemctl reload right after a start, a
// certificate renewal's hook at boot) must not end the process. serve
// caught SIGHUP only after the load, so until then the signal's default
// action killed it. The test sends SIGHUP to its own process from inside
// the load, waits for the signal to land, and lives on.
//
// Not parallel: it replaces configLoad, which the parallel tests' in-process
// checks use once this test has ended.
func TestSIGHUPWhileLoadingDoesNotKill(t *testing.T) {
	t.Cleanup(func() { configLoad = config.Load })
	configLoad = func(name string, args []string, getenv func(string) string, output io.Writer) (*config.Config, error) {
		if err := syscall.Kill(syscall.Getpid(), syscall.SIGHUP); err != nil {
			t.Errorf("kill: %v", err)
		}
		time.Sleep(300 * time.Millisecond) // the signal lands meanwhile
		return nil, errors.New("test: the load ends here")
	}
	var stderr bytes.Buffer
	if code := serve(nil, &stderr); code != 1 || !strings.Contains(stderr.String(), "the load ends here") {
		t.Fatalf("serve: exit %d, stderr %q", code, stderr.String())
	}
}
