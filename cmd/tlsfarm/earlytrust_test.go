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
