package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/nettest"
)

// hungUpstream returns the address of a TCP port whose accept queue is
// full: a connect to it hangs (the kernel drops its SYNs) until the
// dialer gives up, as to a blackholed upstream.
func hungUpstream(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	// Fill the queue; never accepted.
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
		if err != nil {
			break
		}
		t.Cleanup(func() { c.Close() })
		if i > 8 {
			t.Skip("cannot fill a listen queue here")
		}
	}
	return addr
}

// A node at limits.max_connections stops within the drain timeout even
// when a connection's passthrough upstream does not answer its connect
// (the dial waits up to 10 s): the accept loop, waiting for a free slot,
// ends with the drain, not when that dial gives up. Before, the stop took
// the dial's 10 s past the drain, beyond a unit's TimeoutStopSec with the
// default 30 s drain and 45 s stop timeout, and the farm's queues were then
// never flushed.
func TestStopAtConnectionLimitWithHungUpstream(t *testing.T) {
	t.Parallel()
	up := hungUpstream(t)
	p := serveProc(t, []string{"-upstream", "tcp://" + up, "-max-connections", "1", "-drain-timeout", "1s"})
	c, err := tls.Dial("tcp", p.Listeners[0], &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(300 * time.Millisecond) // the node is dialing its upstream
	sig := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		t.Fatal("no exit within 15 s of SIGTERM")
	}
	took := time.Since(sig)
	t.Logf("stopped %v after SIGTERM (drain timeout 1s)", took)
	if took > 3*time.Second {
		t.Errorf("stopped %v after SIGTERM, want about the 1 s drain timeout", took)
	}
	if !p.cmd.ProcessState.Success() {
		t.Errorf("exit %v", p.cmd.ProcessState)
	}
}

// TestDrainingNodeStaysLive: from SIGTERM until the drain ends, the admin
// API's /readyz fails (load balancers send no more) while /healthz answers
// 200 with status "draining": a liveness check that failed it, as it did
// before (503 "unavailable"), had the process killed in the middle of its
// drain, cutting the connections it was finishing.
func TestDrainingNodeStaysLive(t *testing.T) {
	t.Parallel()
	up := hungUpstream(t)
	p := serveProc(t, []string{"-upstream", "tcp://" + up, "-drain-timeout", "5s"})
	c, err := tls.Dial("tcp", p.Listeners[0], &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(300 * time.Millisecond) // the node holds the connection, dialing its upstream
	p.cmd.Process.Signal(syscall.SIGTERM)
	deadline := time.Now().Add(3 * time.Second)
	for {
		code, body := nettest.Do(t, "GET", "http://"+p.Admin+"/healthz", "")
		if strings.Contains(body, `"draining"`) {
			if code != 200 {
				t.Errorf("/healthz while draining: %d, want 200: %s", code, body)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz never said draining within 3 s of SIGTERM: %d %s", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, body := nettest.Do(t, "GET", "http://"+p.Admin+"/readyz", ""); code != 503 {
		t.Errorf("/readyz while draining: %d %s, want 503", code, body)
	}
}
