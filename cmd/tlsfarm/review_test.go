package main

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
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
	const requests = 1000
	p := serveProc(t, []string{"-idle-timeout", "500ms"})
	c, err := net.Dial("tcp", p.Admin)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(40 * time.Second))
	go io.WriteString(c, strings.Repeat("GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n", requests))
	time.Sleep(13 * time.Second) // the write bound, and some
	var got int
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		if sc.Text() == "HTTP/1.1 200 OK" {
			got++
		}
	}
	// The server's close may come as a reset: it leaves answers unsent.
	if err := sc.Err(); errors.Is(err, os.ErrDeadlineExceeded) || got >= requests {
		t.Fatalf("%d of %d answers arrived after the client read nothing for 13 s (%v): the write was never bounded", got, requests, err)
	}
	t.Logf("%d of %d answers arrived before the connection was closed", got, requests)
}
