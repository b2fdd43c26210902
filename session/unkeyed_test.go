package session_test

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// sliceConn is a connection whose type is not comparable: it cannot be a
// map key.
type sliceConn struct {
	net.Conn
	note []byte
}

// boxConn is a comparable connection type that holds a sliceConn: as a map
// key it panics.
type boxConn struct{ net.Conn }

// serveWrapped serves cfg on a local listener, wrapping each accepted
// connection with wrap before tls.Server, and calls HandshakeComplete on
// each completed handshake if report is set. It answers as tlstest.Serve
// does, and returns the address.
func serveWrapped(t *testing.T, cache *session.Cache, cfg *tls.Config, wrap func(net.Conn) net.Conn, report bool) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			raw, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := tls.Server(wrap(raw), cfg)
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if c.Handshake() != nil {
					return
				}
				if report {
					cache.HandshakeComplete(c)
				}
				fmt.Fprintf(c, "node=n1 resumed=%t\n", c.ConnectionState().DidResume)
				io.Copy(io.Discard, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// TestSingleUseUnkeyedConn: single use holds for a server whose connections
// cannot be map keys (the claim's wait for HandshakeComplete is keyed by the
// connection): a single-use session resumes once, whether or not the server
// calls HandshakeComplete.
func TestSingleUseUnkeyedConn(t *testing.T) {
	t.Parallel()
	wraps := map[string]func(net.Conn) net.Conn{
		"slice": func(c net.Conn) net.Conn { return sliceConn{Conn: c, note: []byte("x")} },
		"box":   func(c net.Conn) net.Conn { return boxConn{sliceConn{Conn: c}} },
	}
	for wname, wrap := range wraps {
		for _, report := range []bool{true, false} {
			for _, tv := range versions {
				t.Run(fmt.Sprintf("%s/report=%t/%s", wname, report, tv.name), func(t *testing.T) {
					t.Parallel()
					cert, pool := tlstest.SharedCert()
					cache, err := session.New(&session.Config{SingleUse: true})
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { cache.Close() })
					cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
					cache.Install(cfg)
					addr := serveWrapped(t, cache, cfg, wrap, report)
					frozen := &tlstest.FrozenCache{}
					ccfg := tlstest.ClientConfig(pool, "localhost", tv.v, frozen)
					if tlstest.MustDial(t, addr, ccfg).DidResume {
						t.Fatal("first connection resumed")
					}
					if !tlstest.MustDial(t, addr, ccfg).DidResume {
						t.Fatalf("the single-use session did not resume once (stats %+v)", stats(cache))
					}
					for i := range 3 {
						if tlstest.MustDial(t, addr, ccfg).DidResume {
							t.Fatalf("the single-use session resumed again (%d)", i+2)
						}
					}
					// Settled by the end of the handshake: spent, not held.
					time.Sleep(100 * time.Millisecond)
					if st := stats(cache); st.Retired != 1 {
						t.Fatalf("Retired = %d, want 1 (stats %+v)", st.Retired, st)
					}
				})
			}
		}
	}
}
