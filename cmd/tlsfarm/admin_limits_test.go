package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// TestAdminCutsQuietConnections opens admin API connections that go quiet:
// one after a request (a keep-alive connection), one in a request's body.
// Each must be closed, by limits.idle_timeout and by the admin's 10 s read
// bound, not held for ever.
func TestAdminCutsQuietConnections(t *testing.T) {
	t.Parallel()
	p := serveProc(t, []string{"-idle-timeout", "500ms"})
	for _, tt := range []struct {
		name, request string
		within        time.Duration
	}{
		{"idle after a request", "GET /readyz HTTP/1.1\r\nHost: admin\r\n\r\n", 3 * time.Second},
		{"stalled body", "DELETE /sessions/x HTTP/1.1\r\nHost: admin\r\nContent-Length: 100\r\n\r\nab", 13 * time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := net.Dial("tcp", p.Admin)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			t0 := time.Now()
			io.WriteString(c, tt.request)
			_, err = io.Copy(io.Discard, c)
			if took := time.Since(t0); err != nil || took > tt.within {
				t.Errorf("connection closed after %v (want within %v): %v", took, tt.within, err)
			}
		})
	}
}

// TestAdminCutsScraperThatStopsReading sends the admin API many /metrics
// requests on one connection, then reads nothing: once the buffers on the
// way are full, the answer being written must be given up within the
// admin's 10 s write bound and the connection closed, rather than held
// (with its goroutine) for as long as the client stays. Without the bound,
// every answer arrives once the client reads again.
func TestAdminCutsScraperThatStopsReading(t *testing.T) {
	t.Parallel()
	p := serveProc(t, []string{"-idle-timeout", "500ms"})
	scrapeWithoutReading(t, p.Admin)
}

// scrapeWithoutReading sends the admin listener at addr so many /metrics
// requests on one connection that their answers (16 MiB, and at least
// 1,000) cannot all sit in the socket buffers, the client's kept small so
// that it does not grow while unread, then reads nothing: the listener
// must give up the answer it was writing (its 10 s write bound) and close
// the connection. The test watches the socket's TCP state rather than
// reading after a fixed pause: on a loaded machine the listener may take
// seconds to fill the buffers, so its blocked write's bound may not have
// lapsed by any fixed time, and reading would let it finish (a CI run saw
// all 1,000 answers arrive after a 13 s pause).
func scrapeWithoutReading(t *testing.T, addr string) {
	t.Helper()
	res, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	one, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil || len(one) == 0 {
		t.Fatalf("/metrics: %d bytes, %v", len(one), err)
	}
	requests := max(1000, 16<<20/len(one))
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) {
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 64<<10)
		})
	}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go io.WriteString(c, strings.Repeat("GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n", requests))
	// The bound is 10 s from the write that blocks; the listener fills
	// the buffers in well under a second on a quiet machine.
	const limit = 40 * time.Second
	t0 := time.Now()
	for {
		open, err := tcpEstablished(c.(*net.TCPConn))
		if err != nil {
			t.Skipf("cannot read the socket's TCP state: %v", err)
		}
		if !open {
			break
		}
		if time.Since(t0) > limit {
			t.Fatalf("the connection is still open after the client read nothing for %v: the write was never bounded", limit)
		}
		time.Sleep(100 * time.Millisecond)
	}
	took := time.Since(t0)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var got int
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		if sc.Text() == "HTTP/1.1 200 OK" {
			got++
		}
	}
	// The server's close may come as a reset: it leaves answers unsent.
	if got >= requests {
		t.Fatalf("all %d answers arrived, though the listener closed the connection after %v", got, took)
	}
	t.Logf("the listener closed the connection %v after the requests, %d of %d answers sent (%v)", took.Round(time.Millisecond), got, requests, sc.Err())
}

// TestQUICConnectionsOpenMetric opens HTTP/3 connections to a daemon with
// no connection limit: the metrics must show them, apart from the TCP
// connections of tlsfarm_connections_open, and no longer once closed.
func TestQUICConnectionsOpenMetric(t *testing.T) {
	t.Parallel()
	p := serveProc(t, []string{"-http3"})
	var open []*quic.Conn
	for range 2 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := quic.DialAddr(ctx, p.Listeners[0], &tls.Config{InsecureSkipVerify: true, ServerName: "localhost", NextProtos: []string{http3.NextProtoH3}}, nil)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseWithError(0, "")
		open = append(open, c)
	}
	waitUntil(t, 5*time.Second, func() bool { return metric(t, p, "tlsfarm_quic_connections_open") == 2 },
		"tlsfarm_quic_connections_open = %v with two HTTP/3 connections open", metric(t, p, "tlsfarm_quic_connections_open"))
	if n := metric(t, p, "tlsfarm_connections_open"); n != 0 {
		t.Errorf("tlsfarm_connections_open = %v with no TCP connection open", n)
	}
	open[0].CloseWithError(0, "")
	waitUntil(t, 5*time.Second, func() bool { return metric(t, p, "tlsfarm_quic_connections_open") == 1 },
		"tlsfarm_quic_connections_open = %v after one of two closed", metric(t, p, "tlsfarm_quic_connections_open"))
}
