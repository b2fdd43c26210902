package farm_test

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
)

// TestBreakerClosesWhenStoreAnswers: the store breaker, open after lookups
// failed, closes as soon as a background write reaches the store again (a
// failover completed), not only when its cooldown has run out.
func TestBreakerClosesWhenStoreAnswers(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ms, _ := farmtest.Start(t, 2, &farmtest.Options{NewTransport: redisTransport(srv.URL()), Mode: farm.StoreOnly, WriteThrough: true,
		Tweak: func(c *farm.Config) {
			c.BreakerCooldown = time.Minute
			c.ProbeInterval = time.Hour // the breaker alone decides
			c.WriteThroughTimeout = 50 * time.Millisecond
		}})
	m := ms[0]
	// A ticket n1 lacks, old enough not to be waited for: each
	// presentation is one lookup (failing while the store is down), then a
	// full handshake whose session n1 writes in the background.
	frozen := &tlstest.FrozenCache{}
	tlstest.MustDial(t, ms[1].Server.Addr, farmtest.Client(tls.VersionTLS13, frozen))
	time.Sleep(100 * time.Millisecond)
	dial := func() {
		tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, frozen))
	}
	srv.Kill()
	farmtest.Eventually(t, 20*time.Second, "the breaker open", func() bool {
		dial()
		return farmtest.Counter(m.Node.Metrics(), "tlsfarm_farm_breaker_open") == 1
	})
	srv.Restart()
	start := time.Now()
	farmtest.Eventually(t, 20*time.Second, "the breaker closed", func() bool {
		dial()
		return farmtest.Counter(m.Node.Metrics(), "tlsfarm_farm_breaker_open") != 1
	})
	t.Logf("breaker closed %v after the store came back (cooldown 1m)", time.Since(start).Round(time.Millisecond))
}
