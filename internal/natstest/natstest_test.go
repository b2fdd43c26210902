package natstest

import (
	"errors"
	"net"
	"sync/atomic"
	"testing"

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
