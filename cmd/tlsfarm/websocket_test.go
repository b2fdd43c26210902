package main

import (
	"os"
	"strings"
	"testing"
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
