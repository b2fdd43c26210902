package farm_test

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
)

// TestGateReadLostConnectionReadsAgain: a broadcast, write-through farm of
// two nodes on a Redis server of the test's own, n2's bus and its store
// each on a proxy. n2 issues S; n2's bus freezes, so that its hits are
// gated, and n1 revokes S, reported applied. Then the one connection
// n2's gated read of S's marks is on is lost (the store's proxy holds the
// read, then closes its connections and goes on taking new ones): the
// store is there, on a new connection. Before, the read's lost
// connection (EOF) counted n2 cut off from its store, and S resumed
// unchecked; now the gate reads again, finds the mark, and S does not
// resume.
func TestGateReadLostConnectionReadsAgain(t *testing.T) {
	t.Parallel()
	const maxLag = 150 * time.Millisecond
	g := newGateFarm(t, gateFarmOptions{
		MaxLag: maxLag,
		Tweak: func(c *farm.Config) {
			c.LookupTimeout = 2 * time.Second
			// The frozen bus and the held read are not an outage
			// for as long as the test takes.
			c.ProbeTimeout = 10 * time.Second
			// No probe of the store while its read is held: the
			// probe's connection, lost too, would count the store
			// unanswered, and the hit skip the read.
			c.ProbeInterval = time.Minute
		},
	})
	n2, pxStore := g.n2, g.store2
	g.issue(1)
	s := g.sessions[0]

	g.bus2.Freeze()
	g.waitBusBroken()
	g.revokeApplied(t.Context())

	pxStore.Freeze()
	held := pxStore.Holding()
	resumed := make(chan bool, 1)
	go func() {
		r, err := tlstest.Dial(n2.Server.Addr, farmtest.Client(tls.VersionTLS13, s))
		resumed <- err == nil && r.DidResume
	}()
	farmtest.Eventually(t, 10*time.Second, "n2's gated read is held", func() bool { return pxStore.Holding() > held })
	pxStore.Drop()
	if <-resumed {
		t.Errorf("n2 resumed S, revoked on n1 (applied), when the connection of its gated read was lost with the store there")
	}
	t.Logf("n2's gated hits: %s", g.gatedCounts())
}
