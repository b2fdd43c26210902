package keyexport

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// alive reports whether process pid runs (a zombie does not count).
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the command's name in parentheses.
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

// TestCommandTimeoutEndsItsChildren runs an on-change command whose shell
// starts a child and waits for it, past its timeout, and cancels another
// (the agent stopping): the command's children end with it. Only the
// shell was killed, and its children ran on, orphaned, while the agent
// took the command for ended and might run the next one beside them.
func TestCommandTimeoutEndsItsChildren(t *testing.T) {
	set := mustSet(t, testState(42, 0), 2)
	for _, how := range []string{"timeout", "cancel"} {
		t.Run(how, func(t *testing.T) {
			pidFile := filepath.Join(t.TempDir(), "pid")
			cmd := "sleep 30 & echo $! > " + pidFile + "; wait"
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			timeout := 300 * time.Millisecond
			if how == "cancel" {
				timeout = time.Minute
				time.AfterFunc(300*time.Millisecond, cancel)
			}
			start := time.Now()
			err := Command(cmd, timeout)(ctx, set)
			if err == nil {
				t.Fatal("the command ended early without an error")
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("the command ended after %v", d)
			}
			b, err := os.ReadFile(pidFile)
			if err != nil {
				t.Fatal(err)
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				t.Fatal(err)
			}
			defer syscall.Kill(pid, syscall.SIGKILL)
			for deadline := time.Now().Add(2 * time.Second); alive(pid); {
				if time.Now().After(deadline) {
					t.Fatalf("the command's child (pid %d) still runs after the command ended (%s)", pid, how)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

// TestCommandOutputBounded runs an on-change command that writes 64 MB
// and fails: the agent keeps only the start of its output, for the error.
// It kept all of it, in memory, however much the command wrote before its
// timeout.
func TestCommandOutputBounded(t *testing.T) {
	set := mustSet(t, testState(42, 0), 2)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	err := Command("echo nginx: bad config; head -c 64000000 /dev/zero | tr '\\0' x; exit 1", 0)(context.Background(), set)
	runtime.ReadMemStats(&after)
	if err == nil || !strings.Contains(err.Error(), "nginx: bad config") {
		t.Fatalf("err = %.100v, want the start of the output", err)
	}
	if len(err.Error()) > 400 {
		t.Errorf("the error is %d bytes long", len(err.Error()))
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 16<<20 {
		t.Errorf("running the command allocated %d MB", got>>20)
	}
}
