package main

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// TestLogReaderGoneDoesNotKill: serve logs to standard error; when what
// reads it goes away (a pipe to a logger that died), the next log line
// must not end the daemon. A write to a broken pipe on standard error
// ended a Go program with SIGPIPE, so a SIGHUP's log line killed the
// terminator and every connection it held. Now the line is lost and the
// daemon serves on, and stops cleanly.
func TestLogReaderGoneDoesNotKill(t *testing.T) {
	t.Parallel()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, "serve", "-log-format", "json", "-listen", "127.0.0.1:0", "-admin", "off")
	cmd.Env = environ()
	cmd.Stderr = w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })

	var addr string
	sc := bufio.NewScanner(r)
	for addr == "" && sc.Scan() {
		var line struct {
			Msg       string
			Listeners []string
		}
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "tlsfarm ready" {
			addr = line.Listeners[0]
		}
	}
	if addr == "" {
		t.Fatal("no tlsfarm ready line")
	}
	r.Close() // the log reader is gone
	cmd.Process.Signal(syscall.SIGHUP)
	select {
	case <-done:
		t.Fatalf("serve ended when its log reader went away: %v", cmd.ProcessState)
	case <-time.After(time.Second):
	}
	if f := getFacts(t, addr, &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"}); f.TLSVersion == "" {
		t.Errorf("no answer after the log reader went away: %+v", f)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("no exit within 10 s of SIGTERM")
	}
	if !cmd.ProcessState.Success() {
		t.Errorf("exit %v after SIGTERM", cmd.ProcessState)
	}
}
