package natsbus_test

import (
	"testing"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// TestCloseDuringOutage: a node on NATS (bus and store) closes within
// twice its OpTimeout when the server hangs or goes away with sessions
// queued, on a server of the test's own.
func TestCloseDuringOutage(t *testing.T) {
	t.Parallel()
	srv := startNATS(t)
	farmtest.CloseDuringOutage(t, srv.Addr(), []farm.Mode{farm.Broadcast, farm.StoreOnly}, func(addr string) func(testing.TB, string) (transport.Bus, transport.Store) {
		return natsTransport("nats://" + addr)
	})
}
