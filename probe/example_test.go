package probe_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"

	"github.com/tlsfarm/tlsfarm/probe"
)

// Two HTTPS servers share a session ticket key, as the servers of a farm
// must for a client to resume wherever the balancer sends it. A client that
// alternates between them resumes every session after its first, each on
// the server that did not issue it.
func ExampleRun() {
	key := [32]byte{'e', 'x', 'a', 'm', 'p', 'l', 'e'} // use crypto/rand, and share it
	roots := x509.NewCertPool()
	var targets []string
	for range 2 {
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintln(w, "hello")
		}))
		srv.TLS = &tls.Config{}
		srv.TLS.SetSessionTicketKeys([][32]byte{key})
		srv.StartTLS()
		defer srv.Close()
		roots.AddCert(srv.Certificate())
		targets = append(targets, srv.Listener.Addr().String())
	}

	rep, err := probe.Run(context.Background(), probe.Config{
		Targets:     targets,
		Pick:        probe.PickRoundRobin,
		Connections: 10,
		RootCAs:     roots,
	}, nil)
	if err != nil {
		log.Fatal(err)
	}
	t := rep.Total
	fmt.Printf("%d connections: %d full, %d resumed (%d cross-node), %.0f%% of offers\n",
		t.Connections, t.Full, t.Resumed, t.CrossNode, 100*t.ResumptionRate)
	// Output:
	// 10 connections: 1 full, 9 resumed (9 cross-node), 100% of offers
}
