package proxy

import (
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// TestHTTP3WebSocketClientResetsOneSide opens WebSockets over HTTP/3 whose
// client then resets one side of its stream only, with quic-go's client:
// its send side (RESET_STREAM, an abort: RFC 9220 takes it as a TCP RST)
// while it keeps reading, or its receive side (STOP_SENDING) while it
// keeps its send side open. Either way the proxy must end the WebSocket on
// both sides at once, long before the idle timeout: the upstream's
// connection closed, the client's stream ended, the WebSocket no longer
// counted open, and no goroutine left.
func TestHTTP3WebSocketClientResetsOneSide(t *testing.T) {
	up := newWSUpstream(t)
	cert := mustSelfSigned(t, "localhost")
	s := startWSProxy(t, cert, up.URL, time.Minute)
	for _, side := range []string{"send", "receive"} {
		t.Run(side, func(t *testing.T) {
			path := "/echo"
			if side == "receive" {
				path = "/flood" // the proxy has something to send
			}
			ws := dialWS(t, "h3", s.Addrs()[0], cert, path, wsHeader)
			got := <-up.requests
			must(t, ws.status == http.StatusOK, "status %d", ws.status)
			str := ws.r.(*http3.RequestStream)
			t0 := time.Now()
			if side == "send" {
				echo(t, ws, "before the reset")
				str.CancelWrite(quic.StreamErrorCode(http3.ErrCodeRequestCanceled))
			} else {
				str.CancelRead(quic.StreamErrorCode(http3.ErrCodeRequestCanceled))
			}
			select {
			case <-got.ended:
			case <-time.After(5 * time.Second):
				t.Fatalf("the upstream's connection still open %v after the client reset its %s side", time.Since(t0), side)
			}
			if side == "send" {
				ws.r.SetReadDeadline(time.Now().Add(5 * time.Second))
				_, err := io.Copy(io.Discard, ws.r)
				must(t, time.Since(t0) < 4*time.Second, "client's stream ended %v after its reset: %v", time.Since(t0), err)
			}
			waitFor(t, func() bool { return wsSample(t, s, "tlsfarm_websockets_open", "proto", "h3") == 0 }, "WebSocket still counted open")
			noGoroutineIn(t, "serveWebSocket")
		})
	}
}
