// Package nettest holds helpers for tests that talk to servers over
// loopback sockets: a TCP server that echoes, one that never answers, and
// a one-shot HTTP request.
package nettest

import (
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
)

// Echo starts a TCP server on a loopback port that writes back whatever
// each connection sends, and closes the connection when the client closes
// its side. It stops when the test ends, and Echo returns its address.
func Echo(tb testing.TB) string {
	tb.Helper()
	ln := listen(tb)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	tb.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}

// Silent starts a TCP server on a loopback port that accepts connections
// and never says a word, like a server that hangs. It closes them and stops
// when the test ends, and Silent returns its address.
func Silent(tb testing.TB) string {
	tb.Helper()
	ln := listen(tb)
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	tb.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

func listen(tb testing.TB) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	return ln
}

// Do makes one HTTP request, with bearer as its bearer token unless it is
// empty, and returns the answer's status code and body.
func Do(tb testing.TB, method, url, bearer string) (int, string) {
	tb.Helper()
	req, _ := http.NewRequest(method, url, nil)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
