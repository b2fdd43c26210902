package main

import (
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/tlsfarm/tlsfarm/internal/nettest"
)

// An admin API bound to every interface (no host, 0.0.0.0, ::) is warned
// about by serve and by check: its reads need no token and its token would
// cross the network in plain HTTP. A loopback address is not. Before the
// fix nothing was said.
func TestAdminOnEveryInterfaceWarns(t *testing.T) {
	t.Parallel()
	const warning = "listens on every interface"
	p := serveProc(t, []string{"-admin", "0.0.0.0:0"})
	_, port, _ := net.SplitHostPort(p.Admin)
	if code, _ := nettest.Do(t, "GET", "http://127.0.0.1:"+port+"/readyz", ""); code != http.StatusOK {
		t.Errorf("/readyz on the wildcard admin address: %d", code)
	}
	if !strings.Contains(p.log(), warning) {
		t.Errorf("serve -admin 0.0.0.0:0 logged no warning %q", warning)
	}
	p.stop()

	for _, c := range []struct {
		addr string
		warn bool
	}{{":0", true}, {"[::]:0", true}, {"0.0.0.0:0", true}, {"127.0.0.1:0", false}, {"[::1]:0", false}} {
		_, _, stderr := runCmd(t, []string{"check", "-listen", "127.0.0.1:0", "-admin", c.addr})
		if got := strings.Contains(stderr, warning); got != c.warn {
			t.Errorf("check -admin %s: warned %v, want %v (stderr %q)", c.addr, got, c.warn, stderr)
		}
	}
}
