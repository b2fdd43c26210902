// Package testenv decides what a test does when something it needs from the
// machine (a Redis server, NATS, RabbitMQ, openssl) is missing: skip with a
// loud message, or fail when TLSFARM_REQUIRE_SERVICES=1 (as CI sets), so
// that CI never passes by skipping.
package testenv

import (
	"fmt"
	"net"
	"os"
	"strings"
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

// NginxConfig returns an nginx.conf for a test's nginx: one worker under a
// master in the foreground, its pid, log and temporary files under
// prefix, and one server on 127.0.0.1:port that serves TLS 1.2 and 1.3
// with the certificate and key files given, session tickets under the
// key files ticketKeys (nginx's own keys if none) and no session cache,
// and answers every request 200 with body.
func NginxConfig(prefix string, port int, cert, key string, ticketKeys []string, body string) string {
	var tk strings.Builder
	for _, f := range ticketKeys {
		fmt.Fprintf(&tk, "    ssl_session_ticket_key %s;\n", f)
	}
	return fmt.Sprintf(`daemon off;
master_process on;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log notice;
events { worker_connections 128; }
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  server {
    listen 127.0.0.1:%[2]d ssl;
    ssl_certificate %[3]s;
    ssl_certificate_key %[4]s;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets on;
    ssl_session_timeout 1h;
%[5]s    location / { return 200 "%[6]s\n"; }
  }
}
`, prefix, port, cert, key, tk.String(), body)
}
