package redisbus_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
)

// TestStrikeRefusedAfterSentinelFailover: n1 strikes a 0-RTT identity of a
// ticket issued before the failover, on the master, while the replica's
// link is frozen; the master dies before the replica has the strike, and
// the sentinel promotes the replica, which holds the register's markers
// (replicated long before) and not the strike. n2, joining after the
// failover, must refuse the identity's replay: the promoted replica does
// not hold the farm's strike script, so the register begins anew there,
// after the ticket's issue. Before, the replay was fresh on n2.
func TestStrikeRefusedAfterSentinelFailover(t *testing.T) {
	t.Parallel()
	f := startFailoverFarm(t, "")
	ctx := context.Background()
	identity := []byte("a 0-RTT identity of " + t.Name())
	// A ticket issued now is struck once the register is older than it
	// by MaxSkew (the markers were written when n1 joined).
	var issued time.Time
	farmtest.Eventually(t, 15*time.Second, "a strike of a ticket issued now", func() bool {
		issued = time.Now()
		ok, err := f.n1.Node.Strike(ctx, identity, issued, time.Minute)
		if err == nil && !ok {
			t.Fatal("a ticket never struck was not fresh")
		}
		if !ok {
			time.Sleep(200 * time.Millisecond)
		}
		return ok
	})
	farmtest.Eventually(t, 5*time.Second, "the markers on the replica", func() bool {
		return f.onReplica(t, f.n1.Bus.(*redisbus.Transport).RecordKey("once:00"))
	})
	// Another identity of a ticket of the same issue, struck while the
	// replica's link is frozen: the replica never gets that strike.
	f.link.Freeze()
	lost := []byte("a 0-RTT identity struck while the link was frozen")
	if ok, err := f.n1.Node.Strike(ctx, lost, issued, time.Minute); !ok || err != nil {
		t.Fatalf("strike on n1 with the link frozen: %v, %v", ok, err)
	}
	f.n1.Node.Close()
	f.failOver(t)

	n2 := farmtest.Join(t, "n2", f.name, *f.o)
	farmtest.WaitConnected(t, n2)
	deadline := time.Now().Add(3 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		var ok bool
		ok, err = n2.Node.Strike(ctx, lost, issued, time.Minute)
		if ok {
			t.Fatal("n2 took the replay of a 0-RTT flight struck on the old master before the failover")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !errors.Is(err, farm.ErrStoreLost) {
		t.Fatalf("n2's strike of a ticket issued before the failover: %v; want ErrStoreLost", err)
	}
}
