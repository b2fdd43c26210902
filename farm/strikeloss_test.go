package farm_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// issuedLater is the issue time the strike tests give tickets whose issue
// time is not under test: after every strike register their farms begin.
var issuedLater = time.Now().Add(time.Hour)

// strikeSkew is Config.MaxSkew in the tests of a register that began
// after a ticket was issued: the skew allowance is waited out.
const strikeSkew = 100 * time.Millisecond

// strikeIssuedNow strikes identity on node as a ticket issued now, after
// its group's register began: it tries again, with a ticket issued later,
// while the register is younger. It returns the ticket's issue time.
func strikeIssuedNow(t *testing.T, node *farm.Node, identity []byte) time.Time {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		issued := time.Now()
		time.Sleep(2 * strikeSkew)
		ok, err := node.Strike(context.Background(), identity, issued, time.Minute)
		switch {
		case ok && err == nil:
			return issued
		case err == nil:
			t.Fatal("a ticket never struck was not fresh")
		case time.Now().After(deadline):
			t.Fatalf("strike: %v", err)
		}
	}
}

// strikeAnswer strikes identity on node until the store answers (the
// node's connection may have to be made again).
func strikeAnswer(t *testing.T, node *farm.Node, identity []byte, issued time.Time) (bool, error) {
	t.Helper()
	var ok bool
	var err error
	farmtest.Eventually(t, 10*time.Second, "the store answering a strike", func() bool {
		ok, err = node.Strike(context.Background(), identity, issued, time.Minute)
		return err == nil || errors.Is(err, farm.ErrStoreLost)
	})
	return ok, err
}

// testStrikeThroughStoreLoss is the promise of the strike register through
// a store that loses its data (lose): a ticket struck on one node before
// the loss is refused early data on every node after it, as is a ticket
// issued before the loss and never struck; a ticket issued after the loss
// is fresh once. With part set, only the part of the store that held the
// strike loses its data, and tickets never struck are not tried.
func testStrikeThroughStoreLoss(t *testing.T, newTransport func(testing.TB, string) (transport.Bus, transport.Store), part bool, lose func()) {
	ms, _ := farmtest.Start(t, 3, &farmtest.Options{NewTransport: newTransport,
		Tweak: func(c *farm.Config) {
			c.LookupTimeout, c.BreakerThreshold, c.MaxSkew = 5*time.Second, 1000, strikeSkew
		}})
	struck := []byte("ticket-struck-before-the-loss")
	issued := strikeIssuedNow(t, ms[0].Node, struck)
	if ok, err := ms[1].Node.Strike(context.Background(), struck, issued, time.Minute); ok || err != nil {
		t.Fatalf("a replay before the loss: fresh %v, %v; want a refusal", ok, err)
	}
	lose()
	for i, m := range ms {
		ok, err := strikeAnswer(t, m.Node, struck, issued)
		if ok || !errors.Is(err, farm.ErrStoreLost) {
			t.Fatalf("n%d, after the loss, a ticket struck before it: fresh %v, %v; want ErrStoreLost", i+1, ok, err)
		}
	}
	for i := range 8 {
		if part {
			break
		}
		unused := fmt.Appendf(nil, "ticket-issued-before-the-loss-%d", i)
		ok, err := strikeAnswer(t, ms[i%3].Node, unused, issued)
		if ok || !errors.Is(err, farm.ErrStoreLost) {
			t.Fatalf("after the loss, a ticket issued before it: fresh %v, %v; want ErrStoreLost", ok, err)
		}
	}
	later := []byte("ticket-issued-after-the-loss")
	issued = strikeIssuedNow(t, ms[2].Node, later)
	for i, m := range ms {
		if ok, err := m.Node.Strike(context.Background(), later, issued, time.Minute); ok || err != nil {
			t.Fatalf("n%d, a replay of a ticket issued after the loss: fresh %v, %v; want a replay", i+1, ok, err)
		}
	}
}

// TestStrikeRefusedAfterStoreRestartedEmpty: Redis restarted empty between
// a 0-RTT flight and its replay to another node.
func TestStrikeRefusedAfterStoreRestartedEmpty(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	testStrikeThroughStoreLoss(t, redisTransport(srv.URL()), false, func() {
		srv.Kill()
		srv.Restart()
	})
}

// TestStrikeRefusedAfterShardLostData: in a Redis Cluster without
// replicas, the master that holds the strike restarted empty while the
// others keep their data.
func TestStrikeRefusedAfterShardLostData(t *testing.T) {
	// A cluster of its own, no other test's: it waits for it mostly.
	t.Parallel()
	c := redistest.StartCluster(t, 3, 0, 2*time.Second)
	testStrikeThroughStoreLoss(t, redisTransport(c.URL("")), true, func() {
		lost := 0
		for _, m := range c.Masters() {
			if c.CountKeys(m, "*{once:*}:*") > 0 {
				m.Kill()
				m.Restart()
				lost++
			}
		}
		if lost != 1 {
			t.Fatalf("%d masters held the strike", lost)
		}
		c.WaitHealthy(20 * time.Second)
	})
}

// TestStrikeRefusedWhileStorePaused: a node whose store hangs refuses
// early data within its lookup deadline.
func TestStrikeRefusedWhileStorePaused(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	px := nettest.NewProxy(t, srv.Addr())
	const deadline = 300 * time.Millisecond
	ms, _ := farmtest.Start(t, 1, &farmtest.Options{NewTransport: redisTransport("redis://" + px.Addr + "/0"),
		Tweak: func(c *farm.Config) { c.LookupTimeout, c.BreakerThreshold = deadline, 1000 }})
	node := ms[0].Node
	// The node primes the register on a goroutine of its own when it
	// joins; a strike before that is refused (store_lost), as it should
	// be (TestStrikesCounted).
	farmtest.Eventually(t, 10*time.Second, "the strike register primed", func() bool {
		ok, err := node.Strike(context.Background(), []byte("before"), issuedLater, time.Minute)
		return ok && err == nil
	})
	px.Freeze()
	defer px.Thaw()
	for i := range 3 {
		start := time.Now()
		ok, err := node.Strike(context.Background(), fmt.Appendf(nil, "while-paused-%d", i), issuedLater, time.Minute)
		took := time.Since(start)
		t.Logf("strike %d with the store paused: %v after %v", i, err, took)
		if ok || err == nil {
			t.Fatalf("a strike with the store paused: fresh %v, %v; want an error", ok, err)
		}
		if took > deadline+200*time.Millisecond {
			t.Fatalf("a strike with the store paused took %v, deadline %v", took, deadline)
		}
	}
}

// TestStrikeRegisterPrimedAgainAfterStoreLoss: a node writes the strike
// register's markers when it joins, and again when it finds the store
// restarted empty, without waiting for a strike in each group (whose
// marker would refuse every ticket issued before it).
func TestStrikeRegisterPrimedAgainAfterStoreLoss(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ms, name := farmtest.Start(t, 1, &farmtest.Options{NewTransport: redisTransport(srv.URL()),
		Tweak: func(c *farm.Config) { c.HealInterval = 200 * time.Millisecond }})
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rc.Close()
	markers := func() int { return strikeMarkers(rc, name) }
	farmtest.Eventually(t, 10*time.Second, "256 markers written at the join", func() bool { return markers() == 256 })
	waitGeneration(t, ms[0].Node)
	srv.Kill()
	srv.Restart()
	found := 0
	defer func() {
		if t.Failed() {
			t.Logf("markers found after the loss: %d of 256", found)
		}
	}()
	farmtest.Eventually(t, 10*time.Second, "256 markers written again after the loss", func() bool {
		found = markers()
		return found == 256
	})
}

// primeFailing is a Redis transport whose next failPrimes primings of the
// strike register (PrimeRegister) fail without reaching Redis, as a round
// trip past OpTimeout on a loaded store does.
type primeFailing struct {
	*redisbus.Transport
	failPrimes atomic.Int32
}

func (p *primeFailing) PrimeRegister(ctx context.Context, groups []string, markerTTL time.Duration) error {
	if p.failPrimes.Add(-1) >= 0 {
		return context.DeadlineExceeded
	}
	return p.Transport.PrimeRegister(ctx, groups, markerTTL)
}

// TestStrikeRegisterPrimedAgainAfterFailedPriming: when the priming a node
// makes on finding the store restarted empty fails, a later heal primes
// the register again (before, that one priming was all: the markers were
// left to the first strike of each group).
func TestStrikeRegisterPrimedAgainAfterFailedPriming(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	var tr *primeFailing
	ms, name := farmtest.Start(t, 1, &farmtest.Options{
		NewTransport: func(tb testing.TB, farmName string) (transport.Bus, transport.Store) {
			tr = &primeFailing{Transport: openRedis(tb, srv.URL(), farmName)}
			return tr, tr
		},
		Tweak: func(c *farm.Config) { c.HealInterval = 200 * time.Millisecond }})
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rc.Close()
	markers := func() int { return strikeMarkers(rc, name) }
	farmtest.Eventually(t, 10*time.Second, "256 markers written at the join", func() bool { return markers() == 256 })
	waitGeneration(t, ms[0].Node)
	tr.failPrimes.Store(1)
	srv.Kill()
	srv.Restart()
	farmtest.Eventually(t, 20*time.Second, "256 markers written again after the loss and a failed priming", func() bool {
		return tr.failPrimes.Load() < 0 && markers() == 256
	})
}

// strikeMarkers counts the strike register's markers of farm name in the
// private Redis rc (a KEYS scan: never on the shared server).
func strikeMarkers(rc *redis.Client, name string) int {
	keys, _ := rc.Keys(context.Background(), "tlsfarm:"+name+":{once:??}").Result()
	return len(keys)
}

// waitGeneration waits until node has read the store's generation record:
// a node finds the store lost its data by the record's change, so a loss
// before that read (the join's priming may be done first, on a loaded
// machine) goes unseen and tests nothing.
func waitGeneration(t *testing.T, node *farm.Node) {
	t.Helper()
	farmtest.Eventually(t, 10*time.Second, "the node read the store's generation", func() bool { return node.StoreGeneration() != nil })
}
