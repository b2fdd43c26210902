package proxy

import (
	"errors"
	"net"
	"strconv"
	"syscall"
	"testing"

	"github.com/tlsfarm/tlsfarm/session"
	"github.com/tlsfarm/tlsfarm/ticket"
)

// takenUDPTwin returns a TCP port that is free while its UDP twin is held
// by the returned socket: the port the kernel might pick for a listener
// with port 0 while another process holds the same number over UDP.
func takenUDPTwin(t *testing.T) (int, *net.UDPConn) {
	t.Helper()
	for range 50 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
		if err == nil {
			t.Cleanup(func() { udp.Close() })
			return port, udp
		}
	}
	t.Fatal("no TCP port with a UDP twin to hold in 50 tries")
	return 0, nil
}

// TestHTTP3AnyPortSkipsTakenUDPTwin: a listener asking for any port (port
// 0) with HTTP/3 must bind TCP and UDP on one number; when the kernel's
// TCP pick has its UDP twin taken by someone else, Start tries another
// port instead of failing (CI failed on "bind: address already in use"
// this way). A fixed port whose UDP twin is taken still fails, with the
// cause.
func TestHTTP3AnyPortSkipsTakenUDPTwin(t *testing.T) {
	port, _ := takenUDPTwin(t)
	picks := 0
	orig := netListenTCP
	netListenTCP = func(address string) (net.Listener, error) {
		picks++
		if picks == 1 { // the kernel "picks" the port whose UDP twin is held
			return net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		}
		return orig(address)
	}
	t.Cleanup(func() { netListenTCP = orig })

	s, _ := start(t, nil, func(c *Config) { c.Listeners[0].HTTP3 = true })
	_, got, _ := net.SplitHostPort(s.Addrs()[0])
	if got == strconv.Itoa(port) || picks != 2 {
		t.Fatalf("listening on port %s after %d picks; want another port than %d after 2", got, picks, port)
	}

	netListenTCP = orig
	cache, err := session.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	ring, err := ticket.NewRing(ticket.RingConfig{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Node: "n", Cache: cache, Ring: ring, Listeners: []Listener{{
		Address:      net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		Certificates: []Certificate{{Certificate: mustSelfSigned(t, "localhost")}},
		HTTP3:        true,
	}}}
	fixed, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := fixed.Start(); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("a fixed port with its UDP twin taken: Start returned %v, want address in use", err)
	}
}
