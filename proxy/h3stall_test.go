package proxy

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// TestHTTP3StalledStreamIsCut is TestHTTP2StalledStreamIsCut over HTTP/3:
// the client grants each stream a window of 512 bytes and never reads the
// body of its first answer (3000 bytes), so that stream's window never
// opens, while it keeps the connection busy with other requests, each
// answered and read. The stalled stream must be reset within the idle
// timeout: the body, read at last, must fail, neither whole nor cut short
// with a clean end (which the client would take for the whole answer).
//
// An answer of known length fits in http3's buffer, so the handler returns
// at once and what waits is http3's last flush of the stream. A streamed
// one (no length, flushed by the reverse proxy as it comes) waits in the
// handler's flush, which the idle timeout bounds; the reverse proxy then
// returns as if the answer were whole.
func TestHTTP3StalledStreamIsCut(t *testing.T) {
	t.Run("Length", func(t *testing.T) { testHTTP3StalledStream(t, true) })
	t.Run("Streamed", func(t *testing.T) { testHTTP3StalledStream(t, false) })
}

func testHTTP3StalledStream(t *testing.T, length bool) {
	const idle = 300 * time.Millisecond
	big := strings.Repeat("x", 3000)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/big" {
			if length {
				// The reverse proxy then does not flush it as
				// it comes.
				w.Header().Set("Content-Length", strconv.Itoa(len(big)))
			}
			io.WriteString(w, big)
			return
		}
		io.WriteString(w, "small")
	}))
	defer up.Close()
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) {
		c.Listeners[0].Upstream = up.URL
		c.Listeners[0].HTTP3 = true
		c.IdleTimeout = idle
	})
	tr := &http3.Transport{
		TLSClientConfig: client("localhost", cert),
		QUICConfig: &quic.Config{
			InitialStreamReceiveWindow:     512,
			MaxStreamReceiveWindow:         512,
			InitialConnectionReceiveWindow: 1 << 20,
		},
	}
	defer tr.Close()
	hc := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	base := "https://" + s.Addrs()[0]
	stalled, err := hc.Get(base + "/big")
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Body.Close()
	// Keep the connection busy, and so out of the idle watchdog's reach,
	// for well past the idle timeout.
	for end := time.Now().Add(idle + time.Second); time.Now().Before(end); time.Sleep(idle / 3) {
		resp, err := hc.Get(base + "/small")
		if err != nil {
			t.Fatalf("request beside the stalled stream: %v", err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		must(t, err == nil && string(body) == "small", "beside the stalled stream: %q, %v", body, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	context.AfterFunc(ctx, func() { stalled.Body.Close() })
	body, err := io.ReadAll(stalled.Body)
	t.Logf("stalled body: %d of %d bytes, %v", len(body), len(big), err)
	must(t, err != nil && len(body) < len(big), "the stalled stream was not reset %v after it stalled (idle timeout %v): its body came with a clean end, %d of %d bytes", idle+time.Second, idle, len(body), len(big))
}
