package farm_test

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
)

// TestShutdownRetriesRevocations: a revocation made while the store (and
// bus) is down is still pending when the node stops; Shutdown keeps
// retrying it until its context is done, so a store back a second and a
// half later, several operation timeouts into the stop, still gets it and
// the peer refuses the session. Close alone gives it one operation timeout
// (300 ms here) and loses it.
func TestShutdownRetriesRevocations(t *testing.T) {
	t.Parallel()
	const opTimeout = 300 * time.Millisecond
	srv := redistest.Start(t)
	ms, _ := farmtest.Start(t, 2, &farmtest.Options{NewTransport: redisTransport(srv.URL()), WriteThrough: true,
		Tweak: func(c *farm.Config) { c.OpTimeout = opTimeout }})
	id, frozen := issueHeld(t, ms)
	srv.Kill()
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	st, err := ms[0].Node.RevokeSession(ctx, id)
	cancel()
	if err != nil || st != farm.RevokePending {
		t.Fatalf("RevokeSession with Redis down = %v, %v; want pending", st, err)
	}

	stopped := make(chan time.Duration, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		began := time.Now()
		ms[0].Node.Shutdown(ctx)
		stopped <- time.Since(began)
	}()
	time.Sleep(1500 * time.Millisecond)
	select {
	case took := <-stopped:
		t.Fatalf("Shutdown returned after %v, before the store came back, with the revocation pending", took)
	default:
	}
	srv.Restart()
	select {
	case took := <-stopped:
		t.Logf("Shutdown returned %v after it began", took)
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return within 10 s of the store's return")
	}
	if n := int(farmtest.Counter(ms[0].Node.Metrics(), "tlsfarm_farm_pending_revocations")); n != 0 {
		t.Fatalf("%d revocations still pending after Shutdown", n)
	}
	farmtest.Eventually(t, 5*time.Second, "n2 refuses the session revoked before n1 stopped", func() bool {
		_, ok := lookup(ms[1].Cache, id)
		return !ok
	})
	if tlstest.MustDial(t, ms[1].Server.Addr, farmtest.Client(tls.VersionTLS13, frozen)).DidResume {
		t.Fatal("n2 resumed a session revoked on n1 before it stopped")
	}
}
