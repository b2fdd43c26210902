package farm_test

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestResendHeldOnRequest: a retirement that n1 holds (kept after a write
// that failed, say) but that neither the store nor n2 ever saw is written
// and published again when n2 asks the farm to re-send (msgResend): the
// store loses the session, n2 retires its whole copy, and the session
// resumes nowhere. Requests are rate-limited: five asked at once go out
// as two, the first at once and one a second later. Both modes, Redis as
// bus and store.
func TestResendHeldOnRequest(t *testing.T) {
	t.Parallel()
	for _, mode := range []farm.Mode{farm.Broadcast, farm.StoreOnly} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			ms, _ := farmtest.Start(t, 2, &farmtest.Options{NewTransport: redisTransport(redistest.URL(t)), Mode: mode, WriteThrough: true})
			farmtest.WaitConnected(t, ms...)
			n1, n2 := ms[0], ms[1]
			ids := ownSessions(n1.Cache)
			c := &tlstest.FrozenCache{}
			tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, c))
			id := ids()[0]
			waitStored(t, n1, id)
			if mode == farm.StoreOnly {
				rec, ok := lookup(n1.Cache, id)
				if !ok {
					t.Fatal("n1 does not hold its session")
				}
				if err := n2.Cache.Insert(id, rec, session.OriginPeer); err != nil {
					t.Fatal(err)
				}
			}
			farmtest.Eventually(t, 5*time.Second, "n2 holds the session", func() bool {
				_, ok := lookup(n2.Cache, id)
				return ok
			})

			n1.Node.HoldRetired(id)
			const resend = "tlsfarm_farm_lifecycle_resend_total"
			for range 5 {
				n2.Node.AskResend()
			}
			key := "s:" + hex.EncodeToString(id[:])
			farmtest.Eventually(t, 5*time.Second, "n1 re-sent the retirement: the store and n2 lost the session", func() bool {
				_, err := n2.Store.GetRecord(context.Background(), key)
				_, held := lookup(n2.Cache, id)
				return err != nil && !held
			})
			if got := farmtest.Counter(n1.Node.Metrics(), resend, "event", "request_received"); got == 0 {
				t.Fatal("n1 counted no request received")
			}
			if got := farmtest.Counter(n1.Node.Metrics(), resend, "event", "resent"); got == 0 {
				t.Fatal("n1 counted nothing re-sent")
			}
			for _, m := range ms {
				if tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
					t.Fatalf("the retired session resumed on %s", m.Name)
				}
			}
			time.Sleep(2500 * time.Millisecond)
			if got := farmtest.Counter(n2.Node.Metrics(), resend, "event", "request_sent"); got != 2 {
				t.Fatalf("n2 sent %d requests for 5 asked at once, want 2 (rate-limited)", got)
			}
		})
	}
}
