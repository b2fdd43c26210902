package main

import (
	"bufio"
	"context"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// TestReadyLogTellsWebSocketsOverHTTP2 starts the daemon without and with
// GODEBUG=http2xconnect=1 in its environment: its ready line must say
// whether its HTTP/2 listeners serve WebSockets (extended CONNECT), which
// only that variable decides.
func TestReadyLogTellsWebSocketsOverHTTP2(t *testing.T) {
	godebug := strings.ReplaceAll(os.Getenv("GODEBUG"), "http2xconnect=1", "")
	for _, tt := range []struct {
		godebug string
		want    bool
	}{
		{godebug, false},
		{godebug + ",http2xconnect=1", true},
	} {
		p := serveProc(t, nil, "GODEBUG="+tt.godebug)
		ready := p.waitLog("tlsfarm ready", 0)
		if got, _ := ready["websocket_h2"].(bool); got != tt.want {
			t.Errorf("GODEBUG=%s: ready line says websocket_h2=%v, want %v", tt.godebug, ready["websocket_h2"], tt.want)
		}
	}
}

// TestWebSocketMetricsAndBoundAreWired runs the daemon in front of an
// echoing upstream that switches protocols: a WebSocket over HTTP/1.1 must
// show in tlsfarm_websockets_open and _total at the admin API while it is
// open, and leave the gauge at 0 once closed; and with
// -max-websockets-per-connection 1, a second WebSocket on one HTTP/3
// connection must get 429 and show in tlsfarm_websockets_refused_total.
func TestWebSocketMetricsAndBoundAreWired(t *testing.T) {
	t.Parallel()
	up := newEchoWSUpstream(t)
	p := serveProc(t, []string{"-upstream", up.URL, "-http3", "-max-websockets-per-connection", "1"})
	open := func() float64 { return metric(t, p, `tlsfarm_websockets_open{proto="h1"}`) }

	c, err := tls.Dial("tcp", p.Listeners[0], &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("HTTP/1.1 WebSocket: %v, %v", resp, err)
	}
	io.WriteString(c, "ping\n")
	if line, err := br.ReadString('\n'); err != nil || line != "ping\n" {
		t.Fatalf("echo: %q, %v", line, err)
	}
	if n := open(); n != 1 {
		t.Errorf("tlsfarm_websockets_open{proto=\"h1\"} = %v with one open", n)
	}
	if n := metric(t, p, `tlsfarm_websockets_total{proto="h1"}`); n != 1 {
		t.Errorf("tlsfarm_websockets_total{proto=\"h1\"} = %v", n)
	}
	c.Close()
	waitUntil(t, 5*time.Second, func() bool { return open() == 0 }, "tlsfarm_websockets_open{proto=\"h1\"} = %v after the close", open())

	if got := h3WebSockets(t, p.Listeners[0], 2); got[0] != http.StatusOK || got[1] != http.StatusTooManyRequests {
		t.Errorf("two WebSockets on one HTTP/3 connection, bound 1: statuses %v, want [200 429]", got)
	}
	if n := metric(t, p, `tlsfarm_websockets_refused_total{proto="h3",reason="connection_limit"}`); n != 1 {
		t.Errorf("tlsfarm_websockets_refused_total{proto=\"h3\",reason=\"connection_limit\"} = %v", n)
	}
}

// TestWebSocketBoundFollowsReload starts the daemon with
// limits.max_websockets_per_connection 1 in its file, then raises it to 3
// with SIGHUP: the reload must apply it (no restart needed), and a
// connection may then open 3 WebSockets, not 4.
func TestWebSocketBoundFollowsReload(t *testing.T) {
	t.Parallel()
	up := newEchoWSUpstream(t)
	conf := filepath.Join(t.TempDir(), "tlsfarm.yaml")
	write := func(bound int) {
		writeFile(t, conf, fmt.Sprintf("listeners:\n  - address: 127.0.0.1:0\n    upstream: %s\n    http3: true\nlimits:\n  max_websockets_per_connection: %d\n", up.URL, bound), 0o644)
	}
	write(1)
	p := serveProc(t, []string{"-config", conf})
	if got := h3WebSockets(t, p.Listeners[0], 2); got[1] != http.StatusTooManyRequests {
		t.Fatalf("bound 1: statuses %v, want [200 429]", got)
	}
	write(3)
	p.cmd.Process.Signal(syscall.SIGHUP)
	p.waitLog("reload applied", 10*time.Second)
	want := []int{http.StatusOK, http.StatusOK, http.StatusOK, http.StatusTooManyRequests}
	if got := h3WebSockets(t, p.Listeners[0], 4); !slices.Equal(got, want) {
		t.Errorf("bound reloaded to 3: statuses %v, want %v", got, want)
	}
}

// newEchoWSUpstream returns an upstream that accepts every WebSocket and
// echoes its bytes until the client's end.
func newEchoWSUpstream(t *testing.T) *httptest.Server {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(15 * time.Second))
		h := sha1.Sum([]byte(r.Header.Get("Sec-Websocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: "+
			base64.StdEncoding.EncodeToString(h[:])+"\r\n\r\n")
		io.Copy(c, brw)
	}))
	t.Cleanup(up.Close)
	return up
}

// h3WebSockets opens n WebSockets (extended CONNECT) on one HTTP/3
// connection to addr and returns the statuses answered. They stay open
// until the test ends.
func h3WebSockets(t *testing.T, addr string, n int) []int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	qc, err := quic.DialAddr(ctx, addr, &tls.Config{InsecureSkipVerify: true, ServerName: "localhost", NextProtos: []string{http3.NextProtoH3}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { qc.CloseWithError(0, "") })
	cc := (&http3.Transport{}).NewClientConn(qc)
	select {
	case <-cc.ReceivedSettings():
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	u, _ := url.Parse("https://localhost/ws")
	var statuses []int
	for range n {
		str, err := cc.OpenRequestStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		req := &http.Request{Method: http.MethodConnect, Proto: "websocket", Host: u.Host, URL: u, Header: http.Header{"Sec-Websocket-Version": {"13"}}}
		if err := str.SendRequestHeader(req); err != nil {
			t.Fatal(err)
		}
		resp, err := str.ReadResponse()
		if err != nil {
			t.Fatal(err)
		}
		statuses = append(statuses, resp.StatusCode)
	}
	return statuses
}
