package main

import (
	"context"
	"crypto/tls"
	"strings"
	"syscall"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// TestSecondStopSignalStillFlushes: a second SIGTERM during the drain
// closes the open connections at once, but the farm's queues are still
// flushed: a revocation made while the store was down, pending when the
// signals come, reaches the store once it is back. Before, the second
// signal exited at once (os.Exit), and the revocation, with no
// revocation file, was lost.
//
// The store stays down until 3.5 s after the second signal, so that only
// the flush of the stop can write the revocation, and only if it keeps
// trying past one operation timeout.
func TestSecondStopSignalStillFlushes(t *testing.T) {
	t.Parallel()
	r := redistest.Start(t)
	secret, cert, key, leaf := farmFiles(t)
	name := redistest.Farm(t)
	p := serveProc(t, []string{"-cert", cert, "-key", key, "-farm", r.URL(), "-farm-secret", secret, "-farm-name", name,
		"-debug-expose-session-id", "-handshake-timeout", "20s", "-drain-timeout", "20s"}, "TLSFARM_ADMIN_TOKEN="+farmToken)
	waitUntil(t, 10*time.Second, func() bool { _, c := farmState(t, p); return c }, "the node did not join the farm")
	f := getFacts(t, p.Listeners[0], clientFor("localhost", leaf))
	if f.SessionID == "" {
		t.Fatal("no session ID in the facts")
	}

	r.Kill()
	code, body := adminDo(t, p, "DELETE", "/sessions/"+f.SessionID, farmToken)
	if code != 202 || !strings.Contains(body, `"pending"`) {
		t.Fatalf("DELETE with the store down: %d %s; want 202 pending", code, body)
	}

	// A connection that has shaken hands and sent nothing holds the
	// drain (up to the handshake timeout).
	c, err := tls.Dial("tcp", p.Listeners[0], clientFor("localhost", leaf))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p.cmd.Process.Signal(syscall.SIGTERM)
	p.waitLog("draining connections", 5*time.Second)
	select {
	case <-p.done:
		t.Fatalf("exited on the first SIGTERM with a connection open (%v)", p.cmd.ProcessState)
	case <-time.After(300 * time.Millisecond):
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	p.waitLog("second stop signal: closing open connections now; the farm's queues are still flushed (a third signal exits without)", 5*time.Second)
	// The store comes back well after one operation timeout (2 s) of the
	// flush: the stop keeps retrying the revocation (revocationFlush), not
	// one try of an operation timeout, which missed a store slow to come
	// back under load.
	time.Sleep(3500 * time.Millisecond)
	select {
	case <-p.done:
		t.Fatalf("the stop ended before the store came back, 3.5 s after the second signal:\n%s", p.log())
	default:
	}
	r.Restart()

	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		t.Fatal("no exit within 15 s of the second SIGTERM")
	}
	if got := p.cmd.ProcessState.ExitCode(); got != 1 {
		t.Errorf("exit status %d after a cut drain, want 1", got)
	}
	if p.countLog("stopped") != 1 {
		t.Errorf("no \"stopped\" line: the stop did not run to its end")
	}
	rc := goredis.NewClient(&goredis.Options{Addr: r.Addr()})
	defer rc.Close()
	n, err := rc.Exists(context.Background(), "tlsfarm:{"+name+"}:revoked").Result()
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("the revocation pending at the second signal is not in the store:\n%s", p.log())
	}
	if p.countLog("lost at close") != 0 {
		t.Errorf("the stop says it lost a revocation it wrote:\n%s", p.log())
	}
	// The open connection was closed, not left to the drain timeout.
	c.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("the open connection is still open")
	}
}
