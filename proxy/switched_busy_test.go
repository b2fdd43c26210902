package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestSwitchedConnectionBusyUploadIsNotIdle switches an HTTP/1.1
// connection to another protocol; the client then sends for several idle
// timeouts and reads nothing meanwhile, while the upstream's answer waits
// for it. Bytes move all along, so the switched connection must not be
// cut (the idle timeout closes it once nothing has moved either way), and
// the answer must arrive whole once the client reads.
func TestSwitchedConnectionBusyUploadIsNotIdle(t *testing.T) {
	const idle = time.Second // see TestUpgradedConnectionIdleIsCut
	const answer = 8 << 20
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		go c.Write(make([]byte, answer))
		io.Copy(io.Discard, brw)
	}))
	defer up.Close()
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) {
		c.Listeners[0].Upstream = up.URL
		c.IdleTimeout = idle
	})
	c, err := tlsDialSmall(s.Addrs()[0], client("localhost", cert))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	must(t, resp.StatusCode == http.StatusSwitchingProtocols, "status %d", resp.StatusCode)
	chunk := bytes.Repeat([]byte("u"), 1024)
	sent := 0
	for end := time.Now().Add(3 * idle); time.Now().Before(end); sent += len(chunk) {
		if _, err := c.Write(chunk); err != nil {
			t.Fatalf("sending cut after %d bytes: %v", sent, err)
		}
		time.Sleep(idle / 10)
	}
	n, err := io.ReadFull(br, make([]byte, answer))
	must(t, err == nil, "the upstream's answer was cut after %d bytes of %d: %v", n, answer, err)
}
