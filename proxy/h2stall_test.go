package proxy

import (
	"bytes"
	"crypto/tls"
	"io"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestHTTP2StalledStreamIsCut opens HTTP/2 with a stream window of zero
// (SETTINGS_INITIAL_WINDOW_SIZE 0) and never opens it, while it reads
// every frame the server sends: the TCP connection moves, one stream does
// not. The handler's answer fits in net/http's buffer, so the handler
// returns at once and what waits is net/http's last flush of the stream.
// Another stream, whose window the client opens, must be served meanwhile;
// the stalled one must be reset within the idle timeout, and then the
// connection, idle, closed within another.
func TestHTTP2StalledStreamIsCut(t *testing.T) {
	const idle = 300 * time.Millisecond
	s, tc := dialH2(t, idle)
	must(t, tc.ConnectionState().NegotiatedProtocol == "h2", "negotiated %q, not h2", tc.ConnectionState().NegotiatedProtocol)
	tc.SetDeadline(time.Now().Add(2*idle + 5*time.Second))
	io.WriteString(tc, http2.ClientPreface)
	fr := http2.NewFramer(tc, tc)
	fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	get := func(id uint32) {
		hb.Reset()
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "localhost"}, {":path", "/"}} {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Now()
	get(1)

	var served, reset time.Duration
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			break // the server closed the connection
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				fr.WritePing(true, f.Data)
			}
		case *http2.HeadersFrame:
			if f.StreamID == 1 {
				// Stream 1 has its headers and waits for a window:
				// ask on stream 3, with a window.
				get(3)
				fr.WriteWindowUpdate(3, 1<<20)
			}
		case *http2.DataFrame:
			must(t, f.StreamID == 3, "DATA on stream %d, whose window is closed", f.StreamID)
			if f.StreamEnded() {
				served = time.Since(t0)
			}
		case *http2.RSTStreamFrame:
			must(t, f.StreamID == 1, "stream %d reset (%v)", f.StreamID, f.ErrCode)
			reset = time.Since(t0)
		}
	}
	closed := time.Since(t0)
	t.Logf("stream 3 served after %v, stream 1 reset after %v, connection closed after %v", served, reset, closed)
	must(t, served > 0 && served < idle, "stream 3 served after %v, with stream 1 stalled", served)
	must(t, reset > 0 && reset < idle+time.Second, "stalled stream reset after %v (idle timeout %v)", reset, idle)
	// net/http closes an idle connection 1 s after its GOAWAY.
	must(t, closed < 2*idle+time.Second+1500*time.Millisecond, "connection closed after %v (idle timeout %v)", closed, idle)
	waitClosed(t, s, time.Second)
}

// TestHTTP2StreamEndLeavesNoWriteDeadline makes HTTP/2 requests on one
// connection, each read in full, and then listens until the connection
// closes as idle: no stream may be reset after its end. The bound on a
// stream's last flush (boundLastFlush) reaches net/http's connection
// goroutine in no fixed order with the stream's last frame; handled after
// the stream's end, it must not arm a deadline that resets the closed
// stream (and keeps it in memory) an idle timeout later.
func TestHTTP2StreamEndLeavesNoWriteDeadline(t *testing.T) {
	// Between batches every stream has ended, so the connection is idle
	// for the pause below and for as long as this reader takes to see the
	// batch's last frame: at 300ms a CI run at load 11 under -race let
	// the idle timeout close it after 250 of 400 answers.
	const idle = time.Second
	_, tc := dialH2(t, idle)
	tc.SetDeadline(time.Now().Add(20 * time.Second))
	io.WriteString(tc, http2.ClientPreface)
	fr := http2.NewFramer(tc, tc)
	fr.WriteSettings()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	const batch, requests = 50, 400 // in batches, to keep net/http's connection goroutine busy
	ended, resets := 0, 0
	next := uint32(1)
	get := func() {
		hb.Reset()
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "localhost"}, {":path", "/"}} {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: next, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
		next += 2
	}
	for range batch {
		get()
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			break // the server closed the connection
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.DataFrame:
			if f.Length > 0 {
				fr.WriteWindowUpdate(0, f.Length)
				fr.WriteWindowUpdate(f.StreamID, f.Length)
			}
			if f.StreamEnded() {
				if ended++; ended%batch == 0 && ended < requests {
					// Spread over more than the idle timeout, so
					// that a deadline left on an early stream fires
					// while the connection is open.
					time.Sleep(2 * idle * batch / requests)
					for range batch {
						get()
					}
				}
			}
		case *http2.RSTStreamFrame:
			resets++
			t.Errorf("stream %d reset (%v) after its end", f.StreamID, f.ErrCode)
		}
	}
	must(t, ended == requests, "%d of %d answers", ended, requests)
	t.Logf("%d answers, %d resets", ended, resets)
}

// dialH2 starts a proxy speaking only h2 with the idle timeout idle and
// returns it and a TLS connection to it, closed when the test ends; the
// test speaks HTTP/2 on it frame by frame.
func dialH2(t *testing.T, idle time.Duration) (*Server, *tls.Conn) {
	t.Helper()
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) {
		c.IdleTimeout = idle
		c.Listeners[0].NextProtos = []string{"h2"}
	})
	cfg := client("localhost", cert)
	cfg.NextProtos = []string{"h2"}
	tc, err := tls.Dial("tcp", s.Addrs()[0], cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	return s, tc
}
