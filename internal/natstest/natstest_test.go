package natstest

import (
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/testenv"
)

// TestStartProcClusterTakenPort hands StartProcCluster, for its first
// server, a port that a listener holds (taken after it was found free, as
// happens when test binaries run side by side): the cluster must start
// on other ports, every server answering as itself.
func TestStartProcClusterTakenPort(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	taken := l.Addr().(*net.TCPAddr).Port
	var once atomic.Bool
	pickPort = func(tb testing.TB) int {
		if once.CompareAndSwap(false, true) {
			return taken
		}
		return testenv.FreePort(tb)
	}
	defer func() { pickPort = testenv.FreePort }()
	c := StartProcCluster(t, 3)
	for _, p := range c.Procs {
		if p.Port == taken {
			t.Fatalf("%s is on port %d, which a listener holds", p.Name, taken)
		}
		if err := Answers(p.Addr(), p.Name); err != nil {
			t.Fatalf("%s on %s: %v", p.Name, p.Addr(), err)
		}
	}
}

// TestAnswersTellsOtherServers checks that Answers tells a server that
// took the port from the one expected.
func TestAnswersTellsOtherServers(t *testing.T) {
	for _, tc := range []struct{ name, greeting string }{
		{"not NATS", "+OK redis\r\n"},
		{"another NATS server", `INFO {"server_id":"X","server_name":"other"}` + "\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					c.Write([]byte(tc.greeting))
					c.Close()
				}
			}()
			if err := Answers(l.Addr().String(), "mine"); !errors.Is(err, testenv.ErrPortTaken) {
				t.Fatalf("Answers = %v, want ErrPortTaken", err)
			}
		})
	}
}

// TestStartClusterViaRoutesThroughVia: once every address StartClusterVia
// asked via for refuses connections, the last server has no route left,
// and the others still route to each other.
func TestStartClusterViaRoutesThroughVia(t *testing.T) {
	var proxies []*nettest.Proxy
	c := StartClusterVia(t, 3, func(addr string) string {
		p := nettest.NewProxy(t, addr)
		proxies = append(proxies, p)
		return p.Addr
	})
	// Three a start (n3's two routes and its own address); a start
	// again on other ports asks for three more.
	if len(proxies) == 0 || len(proxies)%3 != 0 {
		t.Fatalf("via was asked for %d addresses; want 3 a start", len(proxies))
	}
	for _, p := range proxies {
		p.Cut()
	}
	deadline := time.Now().Add(10 * time.Second)
	for c.Servers[2].NumRoutes() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("n3 still has %d route(s) with every via address cut", c.Servers[2].NumRoutes())
		}
		time.Sleep(20 * time.Millisecond)
	}
	for i, s := range c.Servers[:2] {
		rz, err := s.Routez(nil)
		if err != nil {
			t.Fatal(err)
		}
		other := c.Servers[1-i].Name()
		for _, r := range rz.Routes {
			if r.RemoteName != other {
				t.Errorf("%s has a route to %s with n3 cut off", s.Name(), r.RemoteName)
			}
		}
		if len(rz.Routes) == 0 {
			t.Errorf("%s has no route to %s with n3 cut off", s.Name(), other)
		}
	}
}
