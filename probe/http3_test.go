package probe_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/probe"
	"github.com/tlsfarm/tlsfarm/proxy"
	"github.com/tlsfarm/tlsfarm/session"
	"github.com/tlsfarm/tlsfarm/ticket"
)

// TestHTTP3ResumesWithEarlyData probes an HTTP/3 server (alone, so its
// anti-replay register is in memory): every connection after each client's
// first resumes, and sends its request in 0-RTT early data with the ticket
// of its previous connection, used once.
func TestHTTP3ResumesWithEarlyData(t *testing.T) {
	cert, err := proxy.SelfSigned("localhost")
	if err != nil {
		t.Fatal(err)
	}
	cache, err := session.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cache.Close() })
	ring, err := ticket.NewRing(ticket.RingConfig{})
	if err != nil {
		t.Fatal(err)
	}
	s, err := proxy.New(proxy.Config{
		Cache: cache, Ring: ring,
		Listeners: []proxy.Listener{{
			Address: "127.0.0.1:0", Certificates: []proxy.Certificate{{Certificate: cert}},
			HTTP3: true, EarlyData: true,
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	roots := x509.NewCertPool()
	roots.AddCert(cert.Leaf)
	const n, clients = 20, 2
	rep, err := probe.Run(context.Background(), probe.Config{
		Targets: []string{s.Addrs()[0]}, ServerName: "localhost", RootCAs: roots,
		Connections: n, Concurrency: clients, HTTP3: true,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tot := rep.Total
	if tot.Failed != 0 || tot.Full != clients || tot.Resumed != n-clients {
		t.Fatalf("full %d, resumed %d, failed %d (%v); want %d, %d, 0", tot.Full, tot.Resumed, tot.Failed, tot.Errors, clients, n-clients)
	}
	if tot.EarlyData == 0 || tot.EarlyData > tot.Resumed {
		t.Fatalf("%d connections with early data accepted, want 1 to %d", tot.EarlyData, tot.Resumed)
	}
	if st := s.QUICStats(); st.EarlyDataAccepted != uint64(tot.EarlyData) {
		t.Errorf("server counted %d early data acceptances, the probe %d", st.EarlyDataAccepted, tot.EarlyData)
	}
	var b bytes.Buffer
	rep.WriteTable(&b)
	if !strings.Contains(b.String(), "HTTP/3 over QUIC") || !strings.Contains(b.String(), "0-RTT") {
		t.Errorf("table:\n%s", b.String())
	}
}
