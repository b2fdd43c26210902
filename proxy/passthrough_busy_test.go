package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// TestTCPPassthroughBusyOneWayIsNotIdle has a TCP upstream stream to the
// client for several idle timeouts while it reads nothing of what the
// client sends (a server busy answering an earlier request while the
// client pipelines more), then read everything. Bytes move all along, so
// the idle timeout ("nothing has moved either way") must not cut the
// connection: the stream must arrive whole, and the client's bytes too.
func TestTCPPassthroughBusyOneWayIsNotIdle(t *testing.T) {
	const idle = 300 * time.Millisecond
	const upload = 8 << 20
	// A small receive buffer, set on the listening socket so that the
	// accepted one starts with it, makes the upload stall at once.
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	got, addr, ccfg := busyPassthrough(t, ln, idle, func(c net.Conn) {
		chunk := bytes.Repeat([]byte("s"), 1024)
		for end := time.Now().Add(4 * idle); time.Now().Before(end); {
			if _, err := c.Write(chunk); err != nil {
				return
			}
			time.Sleep(idle / 10)
		}
		c.Write([]byte("\n"))
	})
	tc, err := tls.Dial("tcp", addr, ccfg)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(20 * time.Second))
	sent := make(chan error, 1)
	go func() {
		_, err := tc.Write(make([]byte, upload))
		if err == nil {
			err = tc.CloseWrite()
		}
		sent <- err
	}()
	var stream []byte
	buf := make([]byte, 4096)
	for !bytes.HasSuffix(stream, []byte("\n")) {
		n, err := tc.Read(buf)
		stream = append(stream, buf[:n]...)
		if err != nil {
			t.Fatalf("the upstream's stream was cut after %d bytes: %v", len(stream), err)
		}
	}
	if err := <-sent; err != nil {
		t.Fatalf("the client's upload failed: %v", err)
	}
	select {
	case n := <-got:
		must(t, n == upload, "the upstream got %d bytes of %d", n, upload)
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream never saw the end of the upload")
	}
}

// TestTCPPassthroughBusyUploadIsNotIdle is the other way round: the client
// uploads for several idle timeouts and reads nothing meanwhile, while the
// upstream, reading the upload, has an answer stuck on its way to the
// client. The upload moves, so the answer must wait for the client, not be
// cut by the idle timeout.
func TestTCPPassthroughBusyUploadIsNotIdle(t *testing.T) {
	const idle = 300 * time.Millisecond
	const answer = 8 << 20
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	got, addr, ccfg := busyPassthrough(t, ln, idle, func(c net.Conn) { go c.Write(make([]byte, answer)) })
	tc, err := tls.DialWithDialer(smallReceiveBuffer, "tcp", addr, ccfg)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(20 * time.Second))
	sent := 0
	chunk := bytes.Repeat([]byte("u"), 1024)
	for end := time.Now().Add(4 * idle); time.Now().Before(end); sent += len(chunk) {
		if _, err := tc.Write(chunk); err != nil {
			t.Fatalf("upload cut after %d bytes: %v", sent, err)
		}
		time.Sleep(idle / 10)
	}
	n, err := io.ReadFull(tc, make([]byte, answer))
	if err != nil {
		t.Fatalf("the upstream's answer was cut after %d bytes of %d: %v", n, answer, err)
	}
	tc.CloseWrite()
	select {
	case n := <-got:
		must(t, n == int64(sent), "the upstream got %d bytes of %d", n, sent)
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream never saw the end of the upload")
	}
}

// busyPassthrough starts an upstream on ln that runs talk on the one
// connection it accepts and then reads it to its end, sending on got how
// many bytes it read, and a TCP passthrough listener to it with the given
// idle timeout. It returns got, the listener's address and a client
// config for it. ln is closed when the test ends.
func busyPassthrough(t *testing.T, ln net.Listener, idle time.Duration, talk func(net.Conn)) (got chan int64, addr string, ccfg *tls.Config) {
	t.Cleanup(func() { ln.Close() })
	got = make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		talk(c)
		n, _ := io.Copy(io.Discard, c)
		got <- n
	}()
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) {
		c.Listeners[0].Upstream = "tcp://" + ln.Addr().String()
		c.Listeners[0].NextProtos = nil
		c.IdleTimeout = idle
	})
	return got, s.Addrs()[0], client("localhost", cert)
}
