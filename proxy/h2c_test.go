package proxy

import (
	"bufio"
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// TestH2CUpgradeNotPassed: a client that asks to switch its TLS connection
// to cleartext HTTP/2 (Upgrade: h2c) must not reach the upstream with that
// request: an upstream that switched would take the client's next requests
// past the proxy's header rewriting (h2c smuggling). The request is served
// as an ordinary one.
func TestH2CUpgradeNotPassed(t *testing.T) {
	var mu sync.Mutex
	var seen http.Header
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = r.Header.Clone()
		mu.Unlock()
		io.WriteString(w, "plain")
	}))
	defer up.Close()
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) { c.Listeners[0].Upstream = up.URL })
	for _, tt := range []struct{ name, connection, upgrade string }{
		{"h2c", "Upgrade, HTTP2-Settings", "h2c"},
		{"h2c in a list", "HTTP2-Settings, upgrade", "foo/1, H2C"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tls.Dial("tcp", s.Addrs()[0], client("localhost", cert))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: "+tt.connection+
				"\r\nUpgrade: "+tt.upgrade+"\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
			res, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			if res.StatusCode != http.StatusOK || string(body) != "plain" {
				t.Errorf("answer %d %q, want the upstream's 200 plain", res.StatusCode, body)
			}
			mu.Lock()
			defer mu.Unlock()
			for _, h := range []string{"Upgrade", "Http2-Settings", "Connection"} {
				if v := seen.Values(h); len(v) != 0 {
					t.Errorf("upstream saw %s: %q", h, v)
				}
			}
		})
	}
}
