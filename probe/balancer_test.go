package probe_test

import (
	"context"
	"crypto/x509"
	"hash/fnv"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/probe"
)

// udpRelay is a layer-4 UDP relay on loopback: route picks the backend of
// each flow (source address and port) when its first packet arrives, given
// the flow's source and how many flows came before it; "" drops every
// packet of the flow. It returns the relay's address.
func udpRelay(t *testing.T, route func(src string, nth int) string) string {
	t.Helper()
	front, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	flows := make(map[string]*net.UDPConn) // nil: a dropped flow
	t.Cleanup(func() {
		front.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range flows {
			if c != nil {
				c.Close()
			}
		}
	})
	go func() {
		buf := make([]byte, 65536)
		for {
			n, src, err := front.ReadFromUDP(buf)
			if err != nil {
				return
			}
			mu.Lock()
			up, ok := flows[src.String()]
			if !ok {
				if backend := route(src.String(), len(flows)); backend != "" {
					addr, err := net.ResolveUDPAddr("udp", backend)
					if err == nil {
						up, err = net.DialUDP("udp", nil, addr)
					}
					if err != nil {
						mu.Unlock()
						continue
					}
					go func() { // the backend's answers, back to the flow's source
						b := make([]byte, 65536)
						for {
							m, err := up.Read(b)
							if err != nil {
								return
							}
							front.WriteToUDP(b[:m], src)
						}
					}()
				}
				flows[src.String()] = up
			}
			mu.Unlock()
			if up != nil {
				up.Write(buf[:n])
			}
		}
	}()
	return front.LocalAddr().String()
}

// udpBalancer is a layer-4 UDP balancer on loopback: it keeps each flow
// (source address and port) on one backend, chosen by a hash of the flow,
// as docs/operations.md asks of the balancer in front of HTTP/3 nodes.
func udpBalancer(t *testing.T, backends []string) string {
	t.Helper()
	return udpRelay(t, func(src string, _ int) string {
		h := fnv.New32a()
		h.Write([]byte(src))
		return backends[h.Sum32()%uint32(len(backends))]
	})
}

// TestHTTP3ThroughBalancerSeesNodesThatShareNothing probes two HTTP/3
// nodes that share nothing through a balancer that hashes flows: a client
// resumes only when its new connection's flow lands on the node that
// issued its session, about half the time. A probe whose connections all
// came from one socket met one node only and reported every resumption as
// working.
func TestHTTP3ThroughBalancerSeesNodesThatShareNothing(t *testing.T) {
	roots := x509.NewCertPool()
	var backends []string
	for range 2 {
		s := startHTTP3Server(t, false, roots)
		backends = append(backends, s.Addrs()[0])
	}
	const n = 40
	rep, err := probe.Run(context.Background(), probe.Config{
		Targets: []string{udpBalancer(t, backends)}, ServerName: "localhost", RootCAs: roots,
		Connections: n, HTTP3: true, Request: "POST /", Timeout: 5 * time.Second,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tot := rep.Total
	if tot.Failed != 0 || tot.Offered != n-1 {
		t.Fatalf("full %d, resumed %d, failed %d (%v), offered %d; want %d offers", tot.Full, tot.Resumed, tot.Failed, tot.Errors, tot.Offered, n-1)
	}
	// Each offer lands on the issuer with probability 1/2; 85% or more of
	// 39 would happen about once in 10^5 runs.
	if tot.ResumptionRate >= 0.85 {
		t.Errorf("through the balancer, nodes that share nothing resumed %d of %d offers (%.0f%%): the probe met one node only",
			tot.Resumed, tot.Offered, 100*tot.ResumptionRate)
	}
}

// dropEveryOtherFlow relays UDP to backend on loopback, but drops every
// packet of every second flow (by source address and port, in the order
// flows begin): those connections' handshakes time out.
func dropEveryOtherFlow(t *testing.T, backend string) string {
	t.Helper()
	return udpRelay(t, func(_ string, nth int) string {
		if nth%2 == 0 {
			return backend
		}
		return ""
	})
}

// TestHTTP3FailedOfferCountsAsNotResumed: over HTTP/3 too, a handshake
// that offered a session and failed (here: timed out, its packets
// dropped) counts as an offer not resumed.
func TestHTTP3FailedOfferCountsAsNotResumed(t *testing.T) {
	roots := x509.NewCertPool()
	s := startHTTP3Server(t, false, roots)
	rep, err := probe.Run(context.Background(), probe.Config{
		Targets: []string{dropEveryOtherFlow(t, s.Addrs()[0])}, ServerName: "localhost", RootCAs: roots,
		Connections: 6, HTTP3: true, Request: "POST /", Timeout: 2 * time.Second,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkSums(t, rep)
	// Connection 1 makes a full handshake; 2, 4 and 6 offer a session
	// and time out; 3 and 5 resume, or make a full handshake if the
	// failure before dropped the session.
	tot := rep.Total
	if tot.Failed != 3 || tot.Errors[probe.FailTimeout] != 3 || tot.OfferFailed != 3 ||
		tot.Offered != tot.Resumed+3 || tot.ResumptionRate > 0.5 {
		t.Errorf("report %+v; want 3 failed offers among %d offered", tot, tot.Resumed+3)
	}
}
