package farm_test

import (
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
)

// TestCarriedLazyPendingPastGrace: with LazyPeers, n2 keeps n1's
// broadcast of P undecoded (pending). A client resumes P on n2 from its
// carried copy, which leaves the pending one where it was. Past P's grace
// the client presents P to n2 again: n2 must not resume it from the
// pending (whole, uncut) copy.
func TestCarriedLazyPendingPastGrace(t *testing.T) {
	t.Parallel()
	const grace = time.Second
	f := startCarryFarm(t, 2, 0, grace, func(c *farm.Config) { c.LazyPeers = true })
	n1, n2 := f.ms[0], f.ms[1]
	c := &tlstest.FrozenCache{}
	dialAs(t, n1, "localhost", c)
	time.Sleep(100 * time.Millisecond) // n2 receives P's broadcast, kept pending
	at := time.Now()
	if !dialAs(t, n2, "localhost", c).DidResume {
		t.Fatal("n2 did not resume P")
	}
	t.Logf("n2 carried admitted: %d", carried(n2, "admitted"))
	time.Sleep(time.Until(at.Add(grace + 300*time.Millisecond)))
	for _, m := range f.ms {
		if dialAs(t, m, "localhost", c).DidResume {
			t.Errorf("%s resumed P past its grace", m.Name)
		}
	}
}
