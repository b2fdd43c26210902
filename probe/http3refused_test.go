package probe_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/tlsfarm/tlsfarm/probe"
	"github.com/tlsfarm/tlsfarm/proxy"
)

// TestHTTP3EarlyDataRefusedRequestsRefusedFail: the probe sends a request
// again after a refusal of its 0-RTT early data (see
// TestHTTP3ResumesWithEarlyDataRefused); that must not hide a server that
// refuses the request itself. A plain quic-go HTTP/3 server issues
// tickets that allow 0-RTT, refuses the early data of every connection
// that offers it (its session's EarlyData cleared as the ticket opens),
// and resets every request's stream. Every connection is counted failed,
// those whose early data was refused (and sent again) too: -max-failures
// counts Total.Failed.
//
// Not under the race detector, as TestHTTP3ResumesWithEarlyData.
func TestHTTP3EarlyDataRefusedRequestsRefusedFail(t *testing.T) {
	if raceEnabled {
		t.Skip("quic-go's own data race on 0-RTT streams; run without -race (.ci/run does)")
	}
	cert, err := proxy.SelfSigned("localhost")
	if err != nil {
		t.Fatal(err)
	}
	var refused, requests atomic.Int64
	conf := &tls.Config{Certificates: []tls.Certificate{*cert}}
	var key [32]byte
	key[0] = 1
	conf.SetSessionTicketKeys([][32]byte{key}) // shared by quic-go's clones of conf
	conf.UnwrapSession = func(identity []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
		ss, err := conf.DecryptTicket(identity, cs)
		if ss != nil && ss.EarlyData {
			// Resumed, but its early data refused: as a farm's
			// anti-replay register refuses a ticket used before.
			ss.EarlyData = false
			refused.Add(1)
		}
		return ss, err
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http3.Server{
		TLSConfig: http3.ConfigureTLSConfig(conf),
		Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
			requests.Add(1)
			panic(http.ErrAbortHandler) // the stream reset: no answer
		}),
		QUICConfig: &quic.Config{Allow0RTT: true},
	}
	go srv.Serve(udp)
	t.Cleanup(func() {
		srv.Close()
		udp.Close()
	})
	roots := x509.NewCertPool()
	roots.AddCert(cert.Leaf)

	const n = 40
	rep, err := probe.Run(context.Background(), probe.Config{
		Targets: []string{udp.LocalAddr().String()}, ServerName: "localhost", RootCAs: roots,
		Connections: n, Concurrency: 2, HTTP3: true,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tot := rep.Total
	t.Logf("full %d, resumed %d, failed %d (%v), early data %d, offered %d; the server refused early data %d times, saw %d requests",
		tot.Full, tot.Resumed, tot.Failed, tot.Errors, tot.EarlyData, tot.Offered, refused.Load(), requests.Load())
	if refused.Load() == 0 {
		t.Fatal("the server refused no early data: the probe offered none, and the test tests nothing")
	}
	if tot.Failed != n || tot.EarlyData != 0 {
		t.Errorf("failed %d of %d (%v), early data %d; want every connection failed, none with early data",
			tot.Failed, n, tot.Errors, tot.EarlyData)
	}
}
