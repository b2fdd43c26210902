package main

import (
	"bufio"
	"bytes"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// TestKeysSecondStopSignalExits stops a tlsfarm keys agent whose Redis
// hangs (paused), so that its stop (releasing the lease, flushing the
// farm) waits for the store's timeouts, seconds. A second SIGTERM then
// ends the agent at once, as serve's third signal does. It was caught and
// dropped (the signal context still held it), and the agent went on
// waiting.
func TestKeysSecondStopSignalExits(t *testing.T) {
	t.Parallel()
	r := redistest.Start(t)
	secret, _, _, _ := farmFiles(t)
	dir := privateDir(t)
	cmd := exec.Command(binary, append([]string{"keys", "-log-format", "json", "-admin", "off",
		"-export", "file:" + filepath.Join(dir, "keys.json")},
		farmArgs(r.URL(), secret, redistest.Farm(t))...)...)
	cmd.Env = environ()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var logs bytes.Buffer
	done := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			mu.Lock()
			logs.Write(sc.Bytes())
			logs.WriteByte('\n')
			mu.Unlock()
		}
		cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		if t.Failed() {
			mu.Lock()
			t.Logf("agent log:\n%s", logs.String())
			mu.Unlock()
		}
	})
	logged := func(msg string) bool {
		mu.Lock()
		defer mu.Unlock()
		return strings.Contains(logs.String(), `"msg":"`+msg)
	}
	waitUntil(t, 15*time.Second, func() bool { return logged("keyexport: exported") }, "no export")

	r.Pause()
	defer r.Resume()
	cmd.Process.Signal(syscall.SIGTERM)
	waitUntil(t, 5*time.Second, func() bool { return logged("stopping") }, "no stopping line")
	select {
	case <-done:
		t.Skipf("the agent stopped within 300 ms with its store paused: nothing to cut short")
	case <-time.After(300 * time.Millisecond):
	}
	start := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		t.Logf("exited %v after the second SIGTERM: %v", time.Since(start).Round(time.Millisecond), cmd.ProcessState)
	case <-time.After(time.Second):
		t.Fatal("still running 1 s after a second SIGTERM")
	}
	if cmd.ProcessState.ExitCode() != 1 {
		t.Errorf("exit %v after a second SIGTERM, want status 1", cmd.ProcessState)
	}
	if !logged("second stop signal") {
		t.Error("no log line for the second signal")
	}
}
