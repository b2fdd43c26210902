package session_test

import (
	"crypto/tls"
	"strings"
	"testing"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestOpenSSLResumes cross-checks the cache with another TLS stack: openssl
// s_client saves the session (-sess_out) and resumes it (-sess_in).
func TestOpenSSLResumes(t *testing.T) {
	for _, tc := range []struct {
		name string
		flag string
		mode session.Mode
	}{
		{"TLS1.2/stateful", "-tls1_2", session.Stateful},
		{"TLS1.3/stateful", "-tls1_3", session.Stateful},
		{"TLS1.2/stateless", "-tls1_2", session.Stateless},
		{"TLS1.3/stateless", "-tls1_3", session.Stateless},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cert, _ := tlstest.SharedCert()
			cache := newCache(t, &session.Config{Mode: tc.mode})
			cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
			cache.Install(cfg)
			srv := tlstest.ServeAndClose(t, "n1", cfg, cache.HandshakeComplete)
			sess := tlstest.SessionFile(t)

			out := tlstest.OpenSSL(t, srv.Addr, tc.flag, "-servername", "localhost", "-sess_out", sess)
			if !strings.Contains(out, "resumed=false") {
				t.Fatalf("first connection: no answer from the server:\n%s", out)
			}
			for i := range 2 {
				out = tlstest.OpenSSL(t, srv.Addr, tc.flag, "-servername", "localhost", "-sess_in", sess)
				if !strings.Contains(out, "Reused, ") || !strings.Contains(out, "resumed=true") {
					t.Fatalf("resumption %d: openssl did not reuse the session:\n%s", i+1, out)
				}
			}
			// Under another server name the same session is refused.
			out = tlstest.OpenSSL(t, srv.Addr, tc.flag, "-servername", "a.example", "-sess_in", sess)
			if !strings.Contains(out, "New, ") || !strings.Contains(out, "resumed=false") {
				t.Fatalf("session resumed under another server name:\n%s", out)
			}
		})
	}
}
