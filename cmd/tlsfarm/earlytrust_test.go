package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/tlsfarm/tlsfarm/config"
)

// TestEarlyDataTrustedBehindBalancer runs serve behind a balancer that
// sends PROXY headers (this test), with early_data_trusted naming a CDN's
// range: the CDN's Early-Data reaches the upstream as one "Early-Data: 1",
// another client's does not, whatever the balancer's own address; a
// reload (SIGHUP) changes the range without a restart.
func TestEarlyDataTrustedBehindBalancer(t *testing.T) {
	t.Parallel()
	seen := make(chan string, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v, ok := r.Header["Early-Data"]
		got := "-"
		if ok {
			got = strings.Join(v, "|")
		}
		seen <- got
	}))
	defer up.Close()
	conf := filepath.Join(t.TempDir(), "tlsfarm.yaml")
	write := func(trusted string) {
		writeFile(t, conf, fmt.Sprintf("listeners:\n  - address: 127.0.0.1:0\n    upstream: %s\n    proxy_protocol:\n      enabled: true\n      trusted: [127.0.0.1/32]\n    early_data_trusted: [%s]\n", up.URL, trusted), 0o644)
	}
	write("203.0.113.0/24, 127.0.0.1")
	p := serveProc(t, []string{"-config", conf})
	send := func(src string) string {
		t.Helper()
		raw, err := net.Dial("tcp", p.Listeners[0])
		if err != nil {
			t.Fatal(err)
		}
		h := proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.ParseIP(src), Port: 50123}, raw.RemoteAddr())
		if _, err := h.WriteTo(raw); err != nil {
			t.Fatal(err)
		}
		c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true})
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: localhost\r\nEarly-Data: 1\r\nEarly-Data: 0\r\nConnection: close\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		select {
		case got := <-seen:
			return got
		case <-time.After(10 * time.Second):
			t.Fatal("the request did not reach the upstream")
			return ""
		}
	}
	if got := send("203.0.113.9"); got != "1" {
		t.Errorf("the CDN's Early-Data reached the upstream as %q, want \"1\"", got)
	}
	if got := send("198.51.100.23"); got != "-" {
		t.Errorf("another client's Early-Data reached the upstream as %q (the balancer, 127.0.0.1, is listed; the client is not)", got)
	}

	write("198.51.100.0/24")
	p.cmd.Process.Signal(syscall.SIGHUP)
	p.waitLog("reload applied", 10*time.Second)
	if got := send("198.51.100.23"); got != "1" {
		t.Errorf("after the reload, the newly trusted range's Early-Data reached the upstream as %q", got)
	}
	if got := send("203.0.113.9"); got != "-" {
		t.Errorf("after the reload, the range no longer trusted still had its Early-Data kept: %q", got)
	}
	p.stop()
}

// TestEarlyDataTrustedBalancerWarning: an early_data_trusted entry inside
// proxy_protocol.trusted (the balancer listed as the intermediary) draws a
// warning; the CDN's range, or a balancer list of every address, does not.
func TestEarlyDataTrustedBalancerWarning(t *testing.T) {
	for _, tc := range []struct {
		proxy, early string
		warn         bool
	}{
		{"10.0.0.0/8", "10.1.2.3", true},
		{"10.0.0.0/8", "10.1.0.0/16", true},
		{"10.0.0.0/8,192.0.2.1", "203.0.113.0/24,192.0.2.1", true},
		// An IPv4-mapped range is the IPv4 range, as the proxy judges it.
		{"10.0.0.0/8", "::ffff:10.1.0.0/112", true},
		{"10.0.0.0/8", "::ffff:203.0.113.0/120", false},
		{"10.0.0.0/8", "203.0.113.0/24", false},
		{"10.0.0.0/8", "0.0.0.0/0", false},
		{"0.0.0.0/0,::/0", "203.0.113.0/24", false},
		{"", "10.1.2.3", false}, // no PROXY protocol: the peer is judged
	} {
		args := []string{"-early-data-trusted", tc.early}
		if tc.proxy != "" {
			args = append(args, "-proxy-protocol", "-proxy-protocol-trusted", tc.proxy)
		}
		cfg, err := config.Load("serve", args, func(string) string { return "" }, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, w := range configWarnings(cfg) {
			if strings.Contains(w, "early_data_trusted") {
				got = append(got, w)
			}
		}
		if tc.warn != (len(got) == 1) || len(got) > 1 {
			t.Errorf("proxy_protocol.trusted %q, early_data_trusted %q: warnings %q", tc.proxy, tc.early, got)
		}
	}
}
