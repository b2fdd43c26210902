package ticket_test

import (
	"crypto/tls"
	"fmt"
	"testing"

	"github.com/tlsfarm/tlsfarm/ticket"
)

// BenchmarkUpdate measures Update applying three keys to n registered
// configs: SetSessionTicketKeys derives AES and HMAC keys (one SHA-512) per key
// per config.
func BenchmarkUpdate(b *testing.B) {
	for _, n := range []int{1, 16} {
		b.Run(fmt.Sprintf("configs=%d", n), func(b *testing.B) {
			r := newRing(b, ticket.RingConfig{})
			for range n {
				r.Register(&tls.Config{})
			}
			keys := newKeys(b, 3)
			b.ReportAllocs()
			for b.Loop() {
				if err := r.Update(keys...); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRotate measures Rotate (which draws a key from crypto/rand) with
// Keep 2 and n registered configs.
func BenchmarkRotate(b *testing.B) {
	for _, n := range []int{1, 16} {
		b.Run(fmt.Sprintf("configs=%d", n), func(b *testing.B) {
			r := newRing(b, ticket.RingConfig{})
			for range n {
				r.Register(&tls.Config{})
			}
			b.ReportAllocs()
			for b.Loop() {
				if err := r.Rotate(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// frozenTicket sets up a server whose ring keeps keep previous keys, all in
// use, and a client holding one ticket under the key named by which:
// "current" (the first key crypto/tls tries) or "oldest" (the last).
func frozenTicket(b *testing.B, version uint16, keep int, which string) (addr string, client *tls.Config, server *tls.Config, ticketBytes []byte) {
	b.Helper()
	r := newRing(b, ticket.RingConfig{Keep: keep})
	server = serverConfig(b)
	r.Register(server)
	addr = startServer(b, server)
	rotate := func(n int) {
		for range n {
			if err := r.Rotate(); err != nil {
				b.Fatal(err)
			}
		}
	}
	cache := &frozenCache{}
	client = clientConfig(b, version, cache)
	if which == "current" {
		rotate(keep)
	}
	connect(b, addr, client)
	if which == "oldest" {
		rotate(keep)
	}
	if st := r.Status(); st.Keys != keep+2 {
		b.Fatalf("ring holds %d keys, want %d", st.Keys, keep+2)
	}
	if !connect(b, addr, client) {
		b.Fatal("frozen ticket did not resume")
	}
	return addr, client, server, cache.ticket(b)
}

// BenchmarkResumeTLS13 measures a resumed TLS 1.3 handshake over loopback,
// client and server both, with a ticket under the first or the last of the
// Keep+2 keys the server tries.
func BenchmarkResumeTLS13(b *testing.B) {
	for _, keep := range []int{2, 8} {
		for _, which := range []string{"current", "oldest"} {
			b.Run(fmt.Sprintf("keep=%d/key=%s", keep, which), func(b *testing.B) {
				addr, client, _, _ := frozenTicket(b, tls.VersionTLS13, keep, which)
				b.ReportAllocs()
				for b.Loop() {
					if !connect(b, addr, client) {
						b.Fatal("did not resume")
					}
				}
			})
		}
	}
}

// BenchmarkDecryptTicket isolates what Keep costs each resumption:
// tls.Config.DecryptTicket on a TLS 1.3 ticket under the first key tried
// (current), the last (oldest), or none of them (unknown: what every forged
// or expired ticket costs).
func BenchmarkDecryptTicket(b *testing.B) {
	for _, keep := range []int{2, 8} {
		for _, which := range []string{"current", "oldest", "unknown"} {
			b.Run(fmt.Sprintf("keep=%d/key=%s", keep, which), func(b *testing.B) {
				w := which
				if w == "unknown" {
					w = "current"
				}
				_, _, server, t := frozenTicket(b, tls.VersionTLS13, keep, w)
				if which == "unknown" {
					t[len(t)-1] ^= 1 // breaks the MAC under every key
				}
				b.ReportAllocs()
				for b.Loop() {
					s, err := server.DecryptTicket(t, tls.ConnectionState{})
					if err != nil || (s == nil) != (which == "unknown") {
						b.Fatalf("DecryptTicket = %v, %v", s, err)
					}
				}
			})
		}
	}
}
