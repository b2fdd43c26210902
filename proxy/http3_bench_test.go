package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
	"github.com/tlsfarm/tlsfarm/ticket"
)

// BenchmarkHandshakeQUICvsTCP compares, in one run, QUIC (HTTP/3) and TCP
// TLS 1.3 handshakes with one server, full and resumed (stateful cache,
// the same session every time), client and server in one process on
// loopback. It reports handshakes/s (wall clock, one at a time) and the
// process CPU per handshake, both ends (cpu-µs/op), which a loaded machine
// disturbs less; compare with benchstat -col /proto.
func BenchmarkHandshakeQUICvsTCP(b *testing.B) {
	cert := sharedH3Cert(b)
	cache, err := session.New(nil)
	if err != nil {
		b.Fatal(err)
	}
	defer cache.Close()
	ring, err := ticket.NewRing(ticket.RingConfig{})
	if err != nil {
		b.Fatal(err)
	}
	s, err := New(Config{Cache: cache, Ring: ring, Listeners: []Listener{{
		Address: "127.0.0.1:0", Certificates: []Certificate{{Certificate: cert}}, NextProtos: []string{"http/1.1"}, HTTP3: true,
	}}})
	if err != nil {
		b.Fatal(err)
	}
	if err := s.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		s.Shutdown(ctx)
	}()
	tcpAddr := s.Addrs()[0]
	udpAddr, _ := net.ResolveUDPAddr("udp", tcpAddr)
	pool := x509.NewCertPool()
	pool.AddCert(cert.Leaf)
	tcpConfig := func(cache tls.ClientSessionCache) *tls.Config {
		return &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS13, NextProtos: []string{"http/1.1"}, ClientSessionCache: cache}
	}

	tcp := func(cfg *tls.Config, resumed bool) func(*testing.B) {
		return func(b *testing.B) {
			b.ReportAllocs()
			start, cpu := time.Now(), tlstest.ProcessCPU()
			for b.Loop() {
				c, err := tls.Dial("tcp", tcpAddr, cfg)
				if err != nil {
					b.Fatal(err)
				}
				if c.ConnectionState().DidResume != resumed {
					b.Fatalf("resumed %v, want %v", c.ConnectionState().DidResume, resumed)
				}
				c.Close()
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "handshakes/s")
			tlstest.ReportCPU(b, cpu)
		}
	}
	quicRun := func(cache tls.ClientSessionCache, resumed bool) func(*testing.B) {
		return func(b *testing.B) {
			b.ReportAllocs()
			c := newH3Client(b, cache)
			start, cpu := time.Now(), tlstest.ProcessCPU()
			for b.Loop() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				conn, err := c.tr.Dial(ctx, udpAddr, c.tls, &quic.Config{})
				cancel()
				if err != nil {
					b.Fatal(err)
				}
				if conn.ConnectionState().TLS.DidResume != resumed {
					b.Fatalf("resumed %v, want %v", conn.ConnectionState().TLS.DidResume, resumed)
				}
				conn.CloseWithError(0, "")
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "handshakes/s")
			tlstest.ReportCPU(b, cpu)
		}
	}

	// One session for each protocol, resumed over and over.
	tcpPinned := newPinnedCache()
	tc, err := tls.Dial("tcp", tcpAddr, tcpConfig(tcpPinned))
	if err != nil {
		b.Fatal(err)
	}
	tc.Write([]byte("GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"))
	tc.Read(make([]byte, 1)) // the TLS 1.3 ticket comes first
	tc.Close()
	tcpPinned.wait(b)
	quicPinned := newPinnedCache()
	qc := newH3Client(b, quicPinned)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	conn, err := qc.tr.Dial(ctx, udpAddr, qc.tls, &quic.Config{})
	cancel()
	if err != nil {
		b.Fatal(err)
	}
	quicPinned.wait(b)
	conn.CloseWithError(0, "")

	b.Run("proto=tcp/kind=full", tcp(tcpConfig(nil), false))
	b.Run("proto=quic/kind=full", quicRun(nil, false))
	b.Run("proto=tcp/kind=resumed", tcp(tcpConfig(tcpPinned), true))
	b.Run("proto=quic/kind=resumed", quicRun(quicPinned, true))
}
