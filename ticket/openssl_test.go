package ticket_test

import (
	"crypto/tls"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/ticket"
)

// startClosingServer serves TLS with cfg on a loopback port until the test
// ends: each connection completes its handshake, writes one byte and closes,
// so that openssl s_client (which waits for the server to close) ends at
// once, with the TLS 1.3 ticket sent before the byte.
func startClosingServer(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				conn := tls.Server(c, cfg)
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(10 * time.Second))
				if conn.Handshake() == nil {
					conn.Write([]byte{'x'})
				}
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// TestRingTicketLifetimeWithOpenSSL checks the ring's promise with
// OpenSSL's client rather than Go's: a ticket issued before a rotation
// resumes for Keep rotations after its key stopped encrypting, on a server
// that took the rotated set with Rotate and on one that took it with Set
// (as a farm member does), and is refused from the rotation after that;
// a ticket under a staged key resumes before that key encrypts. TLS 1.2
// and 1.3.
func TestRingTicketLifetimeWithOpenSSL(t *testing.T) {
	const keep = 2
	for _, flag := range []string{"-tls1_2", "-tls1_3"} {
		t.Run(flag, func(t *testing.T) {
			ring := newRing(t, ticket.RingConfig{Keep: keep})
			first := ring.State()
			peer := newRing(t, ticket.RingConfig{Keep: keep, Initial: &first})
			cfg, peerCfg := serverConfig(t), serverConfig(t)
			defer ring.Register(cfg)()
			defer peer.Register(peerCfg)()
			addr, peerAddr := startClosingServer(t, cfg), startClosingServer(t, peerCfg)
			sess := tlstest.SessionFile(t)
			out := tlstest.OpenSSL(t, addr, flag, "-servername", "localhost", "-sess_out", sess)
			if !strings.Contains(out, "New, ") {
				t.Fatalf("first handshake:\n%s", redactSecrets(out))
			}
			resumes := func(a string) bool {
				out := tlstest.OpenSSL(t, a, flag, "-servername", "localhost", "-sess_in", sess)
				switch {
				case strings.Contains(out, "Reused, "):
					return true
				case strings.Contains(out, "New, "):
					return false
				}
				t.Fatalf("no handshake summary:\n%s", redactSecrets(out))
				return false
			}
			// A staged key decrypts before it encrypts: a server one
			// rotation ahead issues a ticket the other resumes.
			ahead := newRing(t, ticket.RingConfig{Keep: keep})
			st := ring.State()
			st.Epoch += 100
			next, err := st.Rotate(time.Now(), keep)
			if err != nil {
				t.Fatal(err)
			}
			if err := ahead.Set(next); err != nil {
				t.Fatal(err)
			}
			aheadCfg := serverConfig(t)
			defer ahead.Register(aheadCfg)()
			staged := tlstest.SessionFile(t)
			tlstest.OpenSSL(t, startClosingServer(t, aheadCfg), flag, "-servername", "localhost", "-sess_out", staged)
			if out := tlstest.OpenSSL(t, addr, flag, "-servername", "localhost", "-sess_in", staged); !strings.Contains(out, "Reused, ") {
				t.Fatalf("a ticket under the staged key does not resume before the rotation:\n%s", redactSecrets(out))
			}
			for n := 1; n <= keep+1; n++ {
				if err := ring.Rotate(); err != nil {
					t.Fatal(err)
				}
				if err := peer.Set(ring.State()); err != nil {
					t.Fatal(err)
				}
				want := n <= keep
				if got := resumes(addr); got != want {
					t.Errorf("after %d rotations (Rotate): resumed %v, want %v", n, got, want)
				}
				if got := resumes(peerAddr); got != want {
					t.Errorf("after %d rotations (Set): resumed %v, want %v", n, got, want)
				}
			}
		})
	}
}

// redactSecrets drops s_client's lines with session secrets.
func redactSecrets(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.Contains(l, "Master-Key") && !strings.Contains(l, "PSK") && !strings.Contains(l, "ticket") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
