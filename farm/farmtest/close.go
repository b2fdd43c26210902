package farmtest

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
)

// CloseDuringOutage checks, for each mode, that a node whose transport
// fails with sessions queued still closes within twice its OpTimeout: the
// transport's server, at target, is reached through a proxy, and nt opens
// a member's transport at the proxy's address. The proxy is cut (a
// partition, or a crash) or frozen (a hung server: connections open, no
// byte through) once the node has subscribed; ten clients then get
// sessions, which the node can neither publish nor store, and Close is
// timed. The node's ProbeTimeout is four times its OpTimeout: Close must
// not wait for a probe in flight.
func CloseDuringOutage(t *testing.T, target string, modes []farm.Mode, nt func(addr string) func(testing.TB, string) (transport.Bus, transport.Store)) {
	const opTimeout = 500 * time.Millisecond
	for _, mode := range modes {
		for _, c := range []struct {
			name string
			fail func(*nettest.Proxy)
		}{{"cut", (*nettest.Proxy).Cut}, {"hung", (*nettest.Proxy).Freeze}} {
			t.Run(mode.String()+"/"+c.name, func(t *testing.T) {
				p := nettest.NewProxy(t, target)
				m := Join(t, "n1", FarmName(t), Options{NewTransport: nt(p.Addr), Mode: mode, Secret: farm.NewSecret(1),
					Tweak: func(c *farm.Config) {
						c.OpTimeout = opTimeout
						// Close does not wait for a health probe in
						// flight, which on a hung server ends only at
						// its own deadline.
						c.ProbeTimeout = 4 * opTimeout
					}})
				// Before the transport closes: its Close would wait on
				// a hung server.
				t.Cleanup(p.Cut)
				WaitConnected(t, m)
				c.fail(p)
				for range 10 {
					tlstest.MustDial(t, m.Server.Addr, Client(tls.VersionTLS13, &tlstest.FrozenCache{}))
				}
				start := time.Now()
				m.Node.Close()
				took := time.Since(start)
				t.Logf("Close took %v", took.Round(time.Millisecond))
				// Two OpTimeouts is the design's bound: the wait for
				// the queues, then a write that began just before it
				// ended and runs to its own deadline. Scheduling on a
				// loaded machine can add a few milliseconds (1.0006 s
				// was seen on RabbitMQ).
				if bound := 2*opTimeout + 50*time.Millisecond; took > bound {
					t.Errorf("Close took %v with the transport %s, want at most %v", took, c.name, bound)
				}
			})
		}
	}
}
