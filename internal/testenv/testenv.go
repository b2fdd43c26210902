// Package testenv decides what a test does when something it needs from the
// machine (a Redis server, NATS, RabbitMQ, openssl) is missing: skip with a
// loud message, or fail when TLSFARM_REQUIRE_SERVICES=1 (as CI sets), so
// that CI never passes by skipping.
package testenv

import (
	"fmt"
	"net"
	"os"
	"testing"
	"time"
)

// Required reports whether missing services fail tests instead of skipping
// them (TLSFARM_REQUIRE_SERVICES=1).
func Required() bool { return os.Getenv("TLSFARM_REQUIRE_SERVICES") == "1" }

// Skip skips tb with a loud message naming what is missing, or fails it when
// services are required.
func Skip(tb testing.TB, format string, args ...any) {
	tb.Helper()
	msg := fmt.Sprintf(format, args...)
	if Required() {
		tb.Fatalf("TLSFARM_REQUIRE_SERVICES=1 and %s", msg)
	}
	tb.Skipf("SKIPPED LOUDLY: %s (set TLSFARM_REQUIRE_SERVICES=1 to make this a failure)", msg)
}

// Reachable reports whether a TCP server answers at addr.
func Reachable(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// NeedTCP skips (or fails) tb unless a server answers at addr.
func NeedTCP(tb testing.TB, what, addr string) {
	tb.Helper()
	if !Reachable(addr) {
		Skip(tb, "%s is not reachable at %s", what, addr)
	}
}
