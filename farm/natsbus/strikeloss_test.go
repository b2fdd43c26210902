package natsbus_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
)

// TestStrikeRefusedAfterServerRestartedEmpty: a ticket struck on n1, then
// presented to n2 after the nats-server restarted without its JetStream
// data, is refused early data on every node (farm.ErrStoreLost); a ticket
// issued after the restart is fresh once.
func TestStrikeRefusedAfterServerRestartedEmpty(t *testing.T) {
	t.Parallel()
	srv := startNATS(t)
	const skew = 100 * time.Millisecond
	ms, _ := farmtest.Start(t, 3, &farmtest.Options{NewTransport: natsTransport(srv.URL("")),
		Tweak: func(c *farm.Config) { c.LookupTimeout, c.BreakerThreshold, c.MaxSkew = 5*time.Second, 1000, skew }})
	// strikeNow strikes name as a ticket issued now, once the register
	// began before that: each try is a new ticket (a refused strike still
	// records its identity). It returns the identity and issue time.
	strikeNow := func(node *farm.Node, name string) ([]byte, time.Time) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for try := 0; ; try++ {
			identity := fmt.Appendf(nil, "%s-%d", name, try)
			issued := time.Now()
			time.Sleep(2 * skew)
			ok, err := node.Strike(context.Background(), identity, issued, time.Minute)
			switch {
			case ok && err == nil:
				return identity, issued
			case err == nil:
				t.Fatal("a ticket never struck was not fresh")
			case time.Now().After(deadline):
				t.Fatalf("strike: %v", err)
			}
		}
	}
	struck, issued := strikeNow(ms[0].Node, "ticket-struck-before-the-loss")

	srv.Kill()
	entries, err := os.ReadDir(srv.dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if err := os.RemoveAll(srv.dir + "/" + e.Name()); err != nil {
			t.Fatal(err)
		}
	}
	srv.Restart()

	for i, m := range ms {
		var ok bool
		var err error
		farmtest.Eventually(t, 20*time.Second, "the store answering a strike", func() bool {
			ok, err = m.Node.Strike(context.Background(), struck, issued, time.Minute)
			return err == nil || errors.Is(err, farm.ErrStoreLost)
		})
		// The first strike after the restart records the identity in the
		// new register before it reads the register's marker: the ones
		// after it find a replay.
		if ok || i == 0 && !errors.Is(err, farm.ErrStoreLost) {
			t.Fatalf("n%d, after the restart, a ticket struck before it: fresh %v, %v; want a refusal", i+1, ok, err)
		}
	}
	later, issued := strikeNow(ms[1].Node, "ticket-issued-after-the-loss")
	for i, m := range ms {
		if ok, err := m.Node.Strike(context.Background(), later, issued, time.Minute); ok || err != nil {
			t.Fatalf("n%d, a replay of a ticket issued after the restart: fresh %v, %v; want a replay", i+1, ok, err)
		}
	}
}
