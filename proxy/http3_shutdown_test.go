package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// TestHTTP3ShutdownClosesFinishedConnections: a shutdown sends each HTTP/3
// connection GOAWAY, and a client is expected to close its connection once
// its requests are done; one that does not (it ignores the GOAWAY, or has
// not read a response to its end, as quic-go's client then keeps the
// connection) must not hold the shutdown until its deadline. The proxy
// closes such a connection itself, with H3_NO_ERROR, once it has served no
// request for quicShutdownLinger; a request in flight, even longer than
// that, is still answered in full first.
func TestHTTP3ShutdownClosesFinishedConnections(t *testing.T) {
	const size = 1 << 20
	tests := []struct {
		name string
		// client uses the connection before the shutdown; the returned
		// func, if any, runs once the shutdown has begun. The upstream
		// answers /held once hold is closed.
		client func(t *testing.T, conn *quic.Conn, arrived <-chan struct{}, hold chan struct{}) func()
		// serverCloses: the client would keep the connection; else it
		// may close it first, as quic-go's does once it has read the
		// response's end.
		serverCloses bool
	}{
		{"GOAWAY ignored", func(*testing.T, *quic.Conn, <-chan struct{}, chan struct{}) func() { return nil }, true},
		{"response not read to its end", func(t *testing.T, conn *quic.Conn, _ <-chan struct{}, _ chan struct{}) func() {
			str := openRequest(t, conn, "/")
			resp, err := str.ReadResponse()
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("response: %v %v", resp, err)
			}
			// Its body and end (FIN) are left unread.
			return nil
		}, true},
		{"request in flight", func(t *testing.T, conn *quic.Conn, arrived <-chan struct{}, hold chan struct{}) func() {
			str := openRequest(t, conn, "/held")
			<-arrived
			return func() {
				time.Sleep(quicShutdownLinger + 500*time.Millisecond)
				close(hold)
				resp, err := str.ReadResponse()
				if err != nil || resp.StatusCode != http.StatusOK {
					t.Fatalf("response: %v %v", resp, err)
				}
				if _, err := io.ReadFull(str, make([]byte, size)); err != nil {
					t.Fatalf("response cut: %v", err)
				}
			}
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			arrived, hold := make(chan struct{}, 1), make(chan struct{})
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/held" {
					io.WriteString(w, "done")
					return
				}
				arrived <- struct{}{}
				<-hold
				w.Header().Set("Content-Length", strconv.Itoa(size))
				w.Write([]byte(strings.Repeat("x", size)))
			}))
			defer up.Close()
			cert := mustSelfSigned(t, "localhost")
			s, _ := start(t, cert, func(c *Config) {
				c.Listeners[0].Upstream = up.URL
				c.Listeners[0].HTTP3 = true
			})
			cfg := client("localhost", cert)
			cfg.NextProtos = []string{http3.NextProtoH3}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			// The client's keep-alives keep the connection from idling out.
			conn, err := quic.DialAddr(ctx, s.Addrs()[0], cfg, &quic.Config{KeepAlivePeriod: 100 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.CloseWithError(0, "")
			after := tt.client(t, conn, arrived, hold)
			// The server's handshake done (a shutdown closes the
			// connections still in theirs).
			waitFor(t, func() bool { return s.QUICStats().FullHandshakes == 1 }, "QUIC handshake not complete: %+v", s.QUICStats())
			must(t, s.QUICStats().Open == 1, "QUIC connections open: %d", s.QUICStats().Open)
			t0 := time.Now()
			shut := shutdownInBackground(t, s)
			if after != nil {
				after()
			}
			select {
			case err := <-shut:
				must(t, err == nil, "Shutdown: %v", err)
			case <-time.After(4 * time.Second):
				t.Fatalf("Shutdown still waiting %v after it began", time.Since(t0).Round(time.Millisecond))
			}
			select {
			case <-conn.Context().Done():
			case <-time.After(time.Second):
				t.Fatal("the client's connection is still open")
			}
			var appErr *quic.ApplicationError
			err = context.Cause(conn.Context())
			must(t, errors.As(err, &appErr) && appErr.ErrorCode == quic.ApplicationErrorCode(http3.ErrCodeNoError) && (appErr.Remote || !tt.serverCloses),
				"connection ended by %#v, want H3_NO_ERROR (the server's: %v)", err, tt.serverCloses)
			must(t, s.QUICStats().Open == 0, "QUIC connections open after shutdown: %d", s.QUICStats().Open)
		})
	}
}

// openRequest sends a GET for path on a new request stream of conn, with
// quic-go's HTTP/3 client, and leaves the response to the caller.
func openRequest(t *testing.T, conn *quic.Conn, path string) *http3.RequestStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cc := (&http3.Transport{}).NewClientConn(conn)
	str, err := cc.OpenRequestStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	u := &url.URL{Scheme: "https", Host: "localhost", Path: path}
	if err := str.SendRequestHeader(&http.Request{Method: http.MethodGet, URL: u, Host: u.Host, Header: http.Header{}}); err != nil {
		t.Fatal(err)
	}
	str.Close() // no body
	return str
}
