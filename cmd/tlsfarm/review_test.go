package main

import (
	"io"
	"net"
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
