package nettest_test

import (
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/nettest"
)

// TestRefusedHoldsThePort: a connection to Refused's address is refused,
// and no listener can take its port while the test runs. (A helper that
// found a free port and closed it left the port to whoever bound next: a
// probe test's "refused" target once answered as another test's TLS
// server, in CI.)
func TestRefusedHoldsThePort(t *testing.T) {
	addr := nettest.Refused(t)
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err == nil {
		c.Close()
		t.Fatalf("a connection to %s was accepted, want refused", addr)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial %s: %v, want connection refused", addr, err)
	}
	ln, err := net.Listen("tcp", addr)
	if err == nil {
		ln.Close()
		t.Fatalf("a listener took %s while Refused held it", addr)
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("listen %s: %v, want address in use", addr, err)
	}
}
