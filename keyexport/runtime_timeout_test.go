package keyexport

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// TestHAProxyRuntimeHungServer talks to a real HAProxy that hangs (stopped
// with SIGSTOP: the kernel still accepts on its runtime API socket, and
// nothing answers). A command waits at most defaultRuntimeTimeout even
// when its context's deadline is later, as HAProxyRuntime promises: it
// waited for the context's deadline instead, a minute here. And a context
// cancelled meanwhile (the agent stopping) ends the command at once: it
// went on waiting for the deadline.
func TestHAProxyRuntimeHungServer(t *testing.T) {
	dir := privateKeyDir(t)
	keysFile := filepath.Join(dir, "tls-ticket.keys")
	set := mustSet(t, testState(3, 2), 2)
	if err := (&HAProxyTarget{File: keysFile}).Export(context.Background(), set); err != nil {
		t.Fatal(err)
	}
	hp, sock := newHAProxyServer(t, keysFile)
	hp.start()
	rt := &HAProxyRuntime{Socket: sock, ID: keysFile}
	if _, err := rt.Keys(context.Background()); err != nil {
		t.Fatalf("the running HAProxy: %v", err)
	}
	pid := hp.cmd.Process.Pid
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// Before the server's own cleanup, which stops it with SIGTERM.
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGCONT) })
	// The signal takes effect asynchronously: wait until every thread
	// is stopped.
	for deadline := time.Now().Add(5 * time.Second); !stopped(pid); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("HAProxy does not stop on SIGSTOP")
		}
	}

	keys := func(ctx context.Context, within time.Duration) {
		t.Helper()
		done := make(chan error, 1)
		start := time.Now()
		go func() {
			_, err := rt.Keys(ctx)
			done <- err
		}()
		select {
		case err := <-done:
			if err == nil {
				t.Error("a hung HAProxy answered")
			}
			t.Logf("returned after %v: %v", time.Since(start).Round(time.Millisecond), err)
		case <-time.After(within):
			t.Errorf("a command to a hung HAProxy still waits after %v", within)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	keys(ctx, defaultRuntimeTimeout+3*time.Second)

	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	keys(ctx, 2*time.Second)
}

// stopped reports whether every thread of process pid is stopped.
func stopped(pid int) bool {
	tasks, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	if err != nil || len(tasks) == 0 {
		return false
	}
	for _, task := range tasks {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + task.Name() + "/stat")
		if err != nil {
			return false
		}
		// The state follows the command's name in parentheses.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 || i+2 >= len(b) || (b[i+2] != 'T' && b[i+2] != 't') {
			return false
		}
	}
	return true
}
