package farm_test

import (
	"crypto/tls"
	"slices"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestRotationAfterOutageDropsLapsedKeys: the farm's store stops (a
// private redis-server, SIGSTOP) for more than Keep+1 intervals right
// after a rotation. When it is back, the lease holder rotates once, as
// documented, but must drop the previous keys that the rotations missed
// would have dropped, as ticket.Ring.Run does: a ticket issued under a
// key that stopped encrypting before the outage lives at most (Keep+1)
// intervals, and is refused on every node. The key the farm encrypted
// with during the outage stays, and its tickets resume everywhere.
// Before, the one rotation kept Keep-1 such keys for Keep-1 more
// intervals whatever the outage's length.
func TestRotationAfterOutageDropsLapsedKeys(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	const interval, keep = time.Second, 2
	ms, _ := farmtest.Start(t, 2, &farmtest.Options{NewTransport: redisTransport(srv.URL()), SessionMode: session.Stateless,
		Rotation: &farm.RotationConfig{Interval: interval, Keep: keep}})

	st := agreed(t, ms, 3)
	old := &tlstest.FrozenCache{}
	tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tls.VersionTLS13, old))
	// The ticket's key stops encrypting; the store stops right after.
	after := agreed(t, ms, st.Epoch+1)
	srv.Pause()
	paused := time.Now()
	if !slices.Contains(after.Previous, st.Current) {
		srv.Resume()
		t.Fatalf("the farm rotated more than once (epoch %d) before the store stopped", after.Epoch)
	}
	during := &tlstest.FrozenCache{}
	tlstest.MustDial(t, ms[1].Server.Addr, farmtest.Client(tls.VersionTLS13, during))
	time.Sleep(time.Duration(keep+1)*interval + interval/2 - time.Since(paused))
	srv.Resume()

	now := agreed(t, ms, after.Epoch+1)
	if now.Epoch != after.Epoch+1 {
		t.Logf("the farm is at epoch %d", now.Epoch)
	}
	for _, m := range ms {
		if slices.Contains(m.Ring.State().Keys(), st.Current) {
			t.Errorf("%s still holds a key that stopped encrypting before the outage", m.Name)
		}
		if tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, old)).DidResume {
			t.Errorf("%s resumes a ticket older than (Keep+1) intervals", m.Name)
		}
		if !tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, during)).DidResume {
			t.Errorf("%s refuses a ticket issued during the outage", m.Name)
		}
	}
}
