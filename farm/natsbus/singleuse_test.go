package natsbus_test

import (
	"crypto/tls"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestSingleUseFarmWide: over NATS (JetStream KV as the store), a
// single-use session resumes once in the farm and never again, and of
// concurrent handshakes presenting it on three nodes exactly one resumes.
func TestSingleUseFarmWide(t *testing.T) {
	t.Parallel()
	url := sharedURL(t)
	for _, mode := range []farm.Mode{farm.Broadcast, farm.StoreOnly} {
		t.Run(mode.String(), func(t *testing.T) {
			ms, _ := farmtest.Start(t, 3, &farmtest.Options{NewTransport: natsTransport(url), Mode: mode, WriteThrough: true,
				TweakCache: func(c *session.Config) { c.SingleUse = true }})
			frozen := &tlstest.FrozenCache{}
			tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tls.VersionTLS13, frozen))
			time.Sleep(200 * time.Millisecond) // the write-through write is acknowledged; let broadcast land
			var resumed atomic.Int32
			var wg sync.WaitGroup
			for i := range 9 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if tlstest.MustDial(t, ms[i%3].Server.Addr, farmtest.Client(tls.VersionTLS13, frozen)).DidResume {
						resumed.Add(1)
					}
				}()
			}
			wg.Wait()
			if got := resumed.Load(); got != 1 {
				farmtest.LogStats(t, ms)
				t.Fatalf("%d of 9 concurrent handshakes on 3 nodes resumed one single-use session, want exactly 1", got)
			}
			for _, m := range ms {
				if tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, frozen)).DidResume {
					t.Fatalf("a consumed single-use session resumed again on %s", m.Name)
				}
			}
		})
	}
}
