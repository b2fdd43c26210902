package proxy

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestAnswerBeforeBodyIsNotCut: an upstream that answers while the client
// is still sending its request body (HTTP/1.1). net/http closes the
// inbound body when the proxy starts the answer, and the transport that
// was still copying that body to the upstream then dropped the upstream
// connection, cutting the answer (Go issue 40747); the proxy now reads
// and writes at once (full duplex).
func TestAnswerBeforeBodyIsNotCut(t *testing.T) {
	answer := bytes.Repeat([]byte("a"), 256<<10)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.NewResponseController(w).EnableFullDuplex()
		w.Write(answer)
		io.Copy(io.Discard, r.Body)
	}))
	defer up.Close()
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) { c.Listeners[0].Upstream = up.URL })
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: client("localhost", cert)}, Timeout: 20 * time.Second}
	for i := range 5 {
		pr, pw := io.Pipe()
		go func() {
			chunk := bytes.Repeat([]byte("b"), 16<<10)
			for range 16 {
				if _, err := pw.Write(chunk); err != nil {
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
			pw.Close()
		}()
		req, _ := http.NewRequest("POST", "https://"+s.Addrs()[0]+"/", pr)
		req.ContentLength = 16 * 16 << 10
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		pr.CloseWithError(io.ErrClosedPipe)
		if err != nil || n != int64(len(answer)) {
			t.Fatalf("request %d: %d of %d bytes of the answer, %v", i, n, len(answer), err)
		}
	}
}
