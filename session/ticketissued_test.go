package session_test

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestTicketIssuedAt: in both modes, the issue time the cache reads from
// the identity a TLS 1.3 client presents (the ID's milliseconds, the
// stateless binding's nanoseconds) lies within the first handshake, never
// after it; and a ticket the cache did not bind has none.
func TestTicketIssuedAt(t *testing.T) {
	for _, mode := range []session.Mode{session.Stateful, session.Stateless} {
		t.Run(mode.String(), func(t *testing.T) {
			cert, pool := tlstest.SharedCert()
			cache, err := session.New(&session.Config{Mode: mode})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cache.Close() })
			cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
			cfg.SetSessionTicketKeys([][32]byte{{4, 5, 6}})
			cache.Install(cfg)
			type seen struct {
				at time.Time
				ok bool
			}
			got := make(chan seen, 4)
			perHandshake := cfg.GetConfigForClient
			cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
				child, err := perHandshake(hello)
				if err != nil {
					return nil, err
				}
				unwrap := child.UnwrapSession
				child.UnwrapSession = func(identity []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
					ss, err := unwrap(identity, cs)
					if ss != nil {
						at, ok := cache.TicketIssuedAt(identity, ss)
						got <- seen{at, ok}
					}
					return ss, err
				}
				return child, nil
			}
			srv := tlstest.Serve(t, mode.String(), cfg, cache.HandshakeComplete)
			ccfg := tlstest.ClientConfig(pool, "a.example", tls.VersionTLS13, &tlstest.FrozenCache{})
			before := time.Now()
			tlstest.MustDial(t, srv.Addr, ccfg)
			after := time.Now()
			if !tlstest.MustDial(t, srv.Addr, ccfg).DidResume {
				t.Fatal("the second connection did not resume")
			}
			s := <-got
			if !s.ok || s.at.Before(before.Truncate(time.Millisecond)) || s.at.After(after) {
				t.Fatalf("TicketIssuedAt = %v, %t; want between %v and %v", s.at, s.ok, before, after)
			}
			// A ticket without the cache's binding: crypto/tls's seconds
			// are all there is.
			if at, ok := cache.TicketIssuedAt([]byte("a foreign ticket"), &tls.SessionState{}); ok {
				t.Fatalf("a ticket without a binding has the issue time %v", at)
			}
		})
	}
}
