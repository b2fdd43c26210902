package keyexport

import (
	"bufio"
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
)

// TestRuntimeAnswerBounded: an answer longer than the bound is an error,
// not cut silently (a cut last line could read as a key line); one within
// it is returned whole.
func TestRuntimeAnswerBounded(t *testing.T) {
	for _, tc := range []struct {
		name string
		size int
		ok   bool
	}{
		{"within", maxRuntimeAnswer, true},
		{"past", maxRuntimeAnswer + 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "rt.sock")
			ln, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				bufio.NewReader(c).ReadString('\n')
				c.Write([]byte(strings.Repeat("x", tc.size)))
			}()
			rt := &HAProxyRuntime{Socket: sock, ID: "/etc/haproxy/keys"}
			out, err := rt.command(context.Background(), "show tls-keys "+cliWord(rt.ID))
			switch {
			case tc.ok && (err != nil || len(out) != tc.size):
				t.Fatalf("an answer of %d bytes: %d bytes back, error %v", tc.size, len(out), err)
			case !tc.ok && err == nil:
				t.Fatalf("an answer of %d bytes (past the bound %d) was taken: %d bytes back", tc.size, maxRuntimeAnswer, len(out))
			case !tc.ok && !strings.Contains(err.Error(), "show tls-keys"):
				t.Fatalf("the error does not name the command: %v", err)
			}
		})
	}
}

// TestRuntimePeerMustBeLoopback: a TCP runtime API connection whose peer
// is not on a loopback address ("localhost" resolved elsewhere) is refused
// before any key is written.
func TestRuntimePeerMustBeLoopback(t *testing.T) {
	for _, tc := range []struct {
		network string
		peer    net.Addr
		ok      bool
	}{
		{"tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9999}, true},
		{"tcp", &net.TCPAddr{IP: net.IPv4(127, 1, 2, 3), Port: 9999}, true},
		{"tcp", &net.TCPAddr{IP: net.IPv6loopback, Port: 9999}, true},
		{"tcp", &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 9999}, false},
		{"tcp", &net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 9999}, false},
		{"tcp", &net.UnixAddr{Name: "/x", Net: "unix"}, false},
		{"unix", &net.UnixAddr{Name: "/run/haproxy.sock", Net: "unix"}, true},
	} {
		err := checkRuntimePeer(tc.network, tc.peer)
		if (err == nil) != tc.ok {
			t.Errorf("%s peer %v: error %v, want ok %v", tc.network, tc.peer, err, tc.ok)
		}
	}
}
