package proxy

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

// TestReverseProxyDropsClientForwardingHeaders sends the forwarding headers
// an upstream may believe (every X-Forwarded-*, and RFC 7239's Forwarded)
// from a client that is no proxy: the upstream must see none of the
// client's values, only those the terminator sets.
func TestReverseProxyDropsClientForwardingHeaders(t *testing.T) {
	var mu sync.Mutex
	var seen http.Header
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = r.Header.Clone()
		mu.Unlock()
	}))
	defer up.Close()
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) { c.Listeners[0].Upstream = up.URL })
	for _, tt := range []struct {
		header, spoof, want string // want "": the header is not sent upstream
	}{
		{"X-Forwarded-For", "6.6.6.6", "127.0.0.1"},
		{"X-Forwarded-Proto", "http", "https"},
		{"X-Forwarded-Host", "evil.example", "localhost"},
		{"X-Forwarded-Port", "80", ""},
		{"X-Forwarded-Prefix", "/admin", ""},
		{"X-Forwarded-Ssl", "off", ""},
		{"X-Forwarded-Server", "evil.example", ""},
		{"X-Forwarded-Client-Cert", "Hash=0; Subject=\"CN=admin\"", ""},
		{"Forwarded", "for=6.6.6.6;proto=https", ""},
	} {
		get(t, s.Addrs()[0], client("localhost", cert), "/", http.Header{tt.header: {tt.spoof}})
		mu.Lock()
		got := seen.Values(tt.header)
		mu.Unlock()
		if tt.want == "" && len(got) != 0 || tt.want != "" && (len(got) != 1 || got[0] != tt.want) {
			t.Errorf("client sent %s: %q; upstream saw %q, want %q", tt.header, tt.spoof, got, tt.want)
		}
	}
}
