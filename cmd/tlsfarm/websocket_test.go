package main

import (
	"bufio"
	"context"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
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
		io.Copy(c, brw) // echoes bytes until the client's end
	}))
	defer up.Close()
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

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	qc, err := quic.DialAddr(ctx, p.Listeners[0], &tls.Config{InsecureSkipVerify: true, ServerName: "localhost", NextProtos: []string{http3.NextProtoH3}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer qc.CloseWithError(0, "")
	cc := (&http3.Transport{}).NewClientConn(qc)
	select {
	case <-cc.ReceivedSettings():
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	u, _ := url.Parse("https://localhost/ws")
	var statuses []int
	for range 2 {
		str, err := cc.OpenRequestStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer str.CancelRead(0)
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
	if statuses[0] != http.StatusOK || statuses[1] != http.StatusTooManyRequests {
		t.Errorf("two WebSockets on one HTTP/3 connection, bound 1: statuses %v, want [200 429]", statuses)
	}
	if n := metric(t, p, `tlsfarm_websockets_refused_total{proto="h3",reason="connection_limit"}`); n != 1 {
		t.Errorf("tlsfarm_websockets_refused_total{proto=\"h3\",reason=\"connection_limit\"} = %v", n)
	}
}
