package proxy

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestTimedOutWriteSkipsCloseNotify has an HTTP/1.1 client ask for a large
// answer and read none of it. Once a write to it has timed out (the idle
// timeout), the connection must close at once: close_notify, which
// crypto/tls's Close would otherwise try to send for up to 5 s more, cannot
// reach a client known not to read, and would follow a record cut short.
func TestTimedOutWriteSkipsCloseNotify(t *testing.T) {
	const idle = 300 * time.Millisecond
	big := bytes.Repeat([]byte("x"), 32<<10)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for range 2048 { // 64 MiB
			if _, err := w.Write(big); err != nil {
				return
			}
		}
	}))
	defer up.Close()
	defer up.CloseClientConnections()
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) {
		c.IdleTimeout = idle
		c.Listeners[0].Upstream = up.URL
	})
	tc, err := tlsDialSmall(s.Addrs()[0], client("localhost", cert))
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	shrinkSendBuffers(t, s)
	tc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(tc, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	// The path fills within milliseconds; then one write waits idle, and
	// the connection must close right after it, well before the 5 s
	// close_notify bound would end.
	waitClosed(t, s, idle+cutWithin)
}
