package farm_test

import (
	"crypto/tls"
	"slices"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestNodeBackFromPartitionRevivesNoRetiredKey: n3 is cut off from the
// farm's Redis (store and bus) while the farm rotates past every key n3
// holds. When it comes back it must merge the key it kept encrypting
// with (its tickets of the partition resume everywhere), but not the
// previous keys the farm had retired on schedule: a ticket under such a
// key was refused by the farm before the partition ended and must stay
// refused on every node after it. Before, the merge added every previous
// key of n3's ring back as a decrypt-only key, for Keep more rotations.
func TestNodeBackFromPartitionRevivesNoRetiredKey(t *testing.T) {
	t.Parallel()
	url, px, _ := proxiedRedis(t)
	const interval = 3 * time.Second
	ms, _ := farmtest.Start(t, 3, &farmtest.Options{NewTransport: redisTransportVia(url, 3, px.Addr), SessionMode: session.Stateless,
		Rotation: &farm.RotationConfig{Interval: interval, Keep: 1}})
	n1, n3 := ms[0], ms[2]

	// A ticket under the key that encrypts at epoch e, then the rotation
	// to e+1: the key is every node's previous key when n3 is cut off.
	st := agreed(t, ms, 1)
	old := &tlstest.FrozenCache{}
	tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, old))
	if !tlstest.MustDial(t, n3.Server.Addr, farmtest.Client(tls.VersionTLS13, old)).DidResume {
		t.Fatal("n1's ticket does not resume on n3 before the partition")
	}
	agreed(t, ms, st.Epoch+1)
	px.Cut()
	held := n3.Ring.State()
	if held.Epoch != st.Epoch+1 || !slices.Contains(held.Previous, st.Current) {
		t.Fatalf("n3 is at epoch %d when cut off, want %d with the old ticket's key among its previous keys", held.Epoch, st.Epoch+1)
	}
	// n3 keeps encrypting with its current key during the partition.
	during := &tlstest.FrozenCache{}
	tlstest.MustDial(t, n3.Server.Addr, farmtest.Client(tls.VersionTLS13, during))

	// The farm rotates twice more: the old ticket's key leaves its sets
	// (Keep 1), and then n3's current key too.
	farmtest.Eventually(t, 4*interval, "the farm rotates past n3's keys", func() bool {
		return n1.Ring.State().Epoch >= held.Epoch+2
	})
	if tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, old)).DidResume {
		t.Fatal("the farm still resumes a ticket whose key it retired")
	}

	px.Restore()
	farmtest.Eventually(t, 10*time.Second, "n3 merges its keys into the farm's set", func() bool {
		return farmtest.Counter(n3.Rotator.Metrics(), "tlsfarm_ticket_key_sets_merged_total") > 0
	})
	agreed(t, ms, held.Epoch+3)
	for _, m := range ms {
		if !tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, during)).DidResume {
			t.Errorf("%s refuses the ticket n3 issued during the partition", m.Name)
		}
		if tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, old)).DidResume {
			t.Errorf("%s resumes a ticket under a key the farm had retired before n3 came back", m.Name)
		}
	}
}
