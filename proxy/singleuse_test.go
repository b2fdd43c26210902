package proxy

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/metric"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestSingleUseAbortedResumptionReleases: a client that resumes a
// single-use session through the proxy and aborts after the server has
// resumed it (the server's VerifyConnection has passed, so the cache holds
// the claim of a resumed handshake) fails the handshake, and the proxy
// closes the connection. The claim is released within about two seconds
// (the cache sees that the connection is closed), not kept until the
// cache's two-minute pending bound; then the session resumes, once.
// With a PROXY protocol header too, whose reader wraps the socket.
func TestSingleUseAbortedResumptionReleases(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		version    uint16
		proxyProto bool
	}{
		{"TLS1.2", tls.VersionTLS12, false},
		{"TLS1.3", tls.VersionTLS13, false},
		{"TLS1.3/PROXY", tls.VersionTLS13, true},
		{"TLS1.2/PROXY", tls.VersionTLS12, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cert := mustSelfSigned(t, "localhost")
			cache, err := session.New(&session.Config{SingleUse: true})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cache.Close() })
			s, _ := start(t, cert, func(c *Config) {
				c.Cache = cache
				if tc.proxyProto {
					c.Listeners[0].ProxyProtocol = true
					c.Listeners[0].ProxyTrusted = []string{"127.0.0.0/8"}
				}
			})
			addr := s.Addrs()[0]
			dial := func(cfg *tls.Config) (*tls.Conn, error) {
				raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				if tc.proxyProto {
					h := proxyproto.HeaderProxyFromAddrs(2, raw.LocalAddr(), raw.RemoteAddr())
					if _, err := h.WriteTo(raw); err != nil {
						t.Fatal(err)
					}
				}
				c := tls.Client(raw, cfg)
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if err := c.Handshake(); err != nil {
					c.Close()
					return nil, err
				}
				return c, nil
			}
			frozen := &tlstest.FrozenCache{}
			newClient := func() *tls.Config {
				cfg := client("localhost", cert)
				cfg.MinVersion, cfg.MaxVersion = tc.version, tc.version
				cfg.ClientSessionCache = frozen
				return cfg
			}
			resumes := func() bool {
				t.Helper()
				c, err := dial(newClient())
				if err != nil {
					t.Fatal(err)
				}
				_, _, cs := roundTrip(t, c, "/", nil)
				return cs.DidResume
			}
			released := func() float64 {
				v, ok := metric.Value(cache.Metrics(), "tlsfarm_cache_single_use_total", "result", "released")
				if !ok {
					t.Fatal("no released single-use sample")
				}
				return v
			}

			// A full handshake gives the client its session (a TLS 1.3
			// ticket comes with the response) and reports completion
			// (HandshakeComplete), so the cache waits for reports.
			if resumes() {
				t.Fatal("the first handshake resumed")
			}

			var didResume atomic.Bool
			bad := newClient()
			bad.VerifyConnection = func(cs tls.ConnectionState) error {
				didResume.Store(cs.DidResume)
				return errors.New("abort")
			}
			t0 := time.Now()
			if c, err := dial(bad); err == nil {
				c.Close()
				t.Fatal("the aborting client's handshake succeeded")
			}
			if !didResume.Load() {
				t.Fatal("the aborting client's handshake did not resume the session")
			}
			for released() == 0 {
				if time.Since(t0) > 10*time.Second {
					t.Fatalf("the claim of a resumption aborted through the proxy is still held after %v (released %v)", time.Since(t0).Round(time.Millisecond), released())
				}
				time.Sleep(20 * time.Millisecond)
			}
			t.Logf("claim released %v after the aborted handshake began", time.Since(t0).Round(time.Millisecond))

			if !resumes() {
				t.Fatal("an aborted resumption burnt the single-use session")
			}
			// Past the two seconds a claim waits for its report once its
			// handshake has ended: a claim released then, not consumed,
			// would let the session resume again.
			time.Sleep(2500 * time.Millisecond)
			if resumes() {
				t.Fatal("the single-use session resumed twice through the proxy")
			}
			if got := released(); got != 1 {
				t.Fatalf("%v single-use claims released, want 1 (the aborted handshake's)", got)
			}
			if v, _ := metric.Value(cache.Metrics(), "tlsfarm_cache_single_use_total", "result", "late"); v != 0 {
				t.Fatalf("%v late single-use reports, want 0", v)
			}
		})
	}
}

// TestConnSyscallConnControlOnly: the socket a conn exposes for the session
// cache is not a way around the conn's own Read. Bytes that a PROXY
// protocol reader buffered past the header reach a copy into an os.File
// (which splices from a syscall.Conn's socket when it can), and the
// RawConn's Read and Write refuse while Control works.
func TestConnSyscallConnControlOnly(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cli, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	srv, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	// The header and the payload in one write: the reader takes both.
	var buf bytes.Buffer
	if _, err := proxyproto.HeaderProxyFromAddrs(2, cli.LocalAddr(), cli.RemoteAddr()).WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	buf.WriteString("payload")
	if _, err := cli.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	c := &conn{Conn: proxyproto.NewConn(srv)}
	defer c.Conn.Close()
	if c.Conn.(*proxyproto.Conn).ProxyHeader() == nil {
		t.Fatal("no PROXY header read")
	}
	cli.Close()

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(w, c); err != nil {
		t.Fatal(err)
	}
	w.Close()
	got, _ := io.ReadAll(r)
	if string(got) != "payload" {
		t.Fatalf("copied %q from the connection, want %q", got, "payload")
	}

	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Control(func(uintptr) {}); err != nil {
		t.Fatalf("Control on an open connection: %v", err)
	}
	if err := rc.Read(func(uintptr) bool { return true }); err == nil {
		t.Fatal("the RawConn's Read is allowed")
	}
	if err := rc.Write(func(uintptr) bool { return true }); err == nil {
		t.Fatal("the RawConn's Write is allowed")
	}
	c.Conn.Close()
	if err := rc.Control(func(uintptr) {}); err == nil {
		t.Fatal("Control on a closed connection succeeded")
	}
}
