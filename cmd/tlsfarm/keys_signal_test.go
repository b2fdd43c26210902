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

// A keysProc is a tlsfarm keys agent run as its own process, with JSON
// logs, exporting a JSON key file.
type keysProc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited

	mu   sync.Mutex
	logs bytes.Buffer
}

// startKeysProc starts tlsfarm keys on the farm at url, and waits for its
// first export. It is killed when the test ends.
func startKeysProc(t *testing.T, url string) *keysProc {
	t.Helper()
	secret, _, _, _ := farmFiles(t)
	p := &keysProc{done: make(chan struct{})}
	p.cmd = exec.Command(binary, append([]string{"keys", "-log-format", "json", "-admin", "off",
		"-export", "file:" + filepath.Join(privateDir(t), "keys.json")},
		farmArgs(url, secret, redistest.Farm(t))...)...)
	p.cmd.Env = environ()
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.logs.Write(sc.Bytes())
			p.logs.WriteByte('\n')
			p.mu.Unlock()
		}
		p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			p.mu.Lock()
			t.Logf("agent log:\n%s", p.logs.String())
			p.mu.Unlock()
		}
	})
	waitUntil(t, 15*time.Second, func() bool { return p.logged("keyexport: exported") }, "no export")
	return p
}

// logged reports whether the agent logged a line whose message starts
// with msg.
func (p *keysProc) logged(msg string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Contains(p.logs.String(), `"msg":"`+msg)
}

// TestKeysSecondStopSignalExits stops a tlsfarm keys agent whose Redis
// hangs (paused), so that its stop (releasing the lease, flushing the
// farm) waits for the store's timeouts, seconds. A second SIGTERM then
// ends the agent at once, as serve's third signal does. It was caught and
// dropped (the signal context still held it), and the agent went on
// waiting.
func TestKeysSecondStopSignalExits(t *testing.T) {
	t.Parallel()
	r := redistest.Start(t)
	p := startKeysProc(t, r.URL())
	r.Pause()
	defer r.Resume()
	p.cmd.Process.Signal(syscall.SIGTERM)
	waitUntil(t, 5*time.Second, func() bool { return p.logged("stopping") }, "no stopping line")
	select {
	case <-p.done:
		t.Skipf("the agent stopped within 300 ms with its store paused: nothing to cut short")
	case <-time.After(300 * time.Millisecond):
	}
	start := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		t.Logf("exited %v after the second SIGTERM: %v", time.Since(start).Round(time.Millisecond), p.cmd.ProcessState)
	case <-time.After(time.Second):
		t.Fatal("still running 1 s after a second SIGTERM")
	}
	if p.cmd.ProcessState.ExitCode() != 1 {
		t.Errorf("exit %v after a second SIGTERM, want status 1", p.cmd.ProcessState)
	}
	if !p.logged("second stop signal") {
		t.Error("no log line for the second signal")
	}
}

// TestKeysSurvivesSIGHUP sends SIGHUP to a running tlsfarm keys agent, as
// a hook that reloads every tlsfarm process (pkill -HUP -x tlsfarm, for
// serve's certificates) would: the agent, which has nothing to reload,
// logs it and goes on, then stops cleanly on SIGTERM. SIGHUP's default
// action ended it at once, without releasing the rotation lease.
func TestKeysSurvivesSIGHUP(t *testing.T) {
	t.Parallel()
	p := startKeysProc(t, redistest.URL(t))
	p.cmd.Process.Signal(syscall.SIGHUP)
	select {
	case <-p.done:
		t.Fatalf("SIGHUP ended the agent: %v", p.cmd.ProcessState)
	case <-time.After(500 * time.Millisecond):
	}
	if !p.logged("SIGHUP") {
		t.Error("no log line for SIGHUP")
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatal("no exit within 10 s of SIGTERM")
	}
	if !p.cmd.ProcessState.Success() {
		t.Errorf("exit %v after SIGTERM", p.cmd.ProcessState)
	}
}
