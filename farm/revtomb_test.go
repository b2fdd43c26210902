package farm_test

import (
	"bufio"
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

const (
	revTombEnvBus = "TLSFARM_REVTOMB_BUS" // the child's bus; crashEnvURL is its store
	revTombCount  = 5
	revTombFirst  = 0x70b5_0000
)

// revTombOptions are the options of the nodes of
// TestRestartSealsNoNewTombstone: bus and store on Redis servers of their
// own, a RevocationFile.
func revTombOptions(busURL, storeURL string, secret farm.Secret, file string) farmtest.Options {
	open := func(t testing.TB, url, farmName string) *redisbus.Transport {
		tr, err := redisbus.Open(url, farmName)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		return tr
	}
	return farmtest.Options{Secret: secret,
		NewTransport: func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
			return open(t, busURL, farmName), open(t, storeURL, farmName)
		},
		Tweak: func(c *farm.Config) {
			c.RevocationFile = file
			c.OpTimeout = 300 * time.Millisecond
			c.TallyInterval = -1
			c.ProbeInterval = time.Hour
		}}
}

// TestRestartSealsNoNewTombstone: a node (n1, in a process of its own)
// revokes revTombCount chains while its bus is down: their tombstones
// reach the store, but the revocations stay pending, and the node is
// killed with SIGKILL. The node that starts on its RevocationFile (the
// bus still down) writes them to the store again, and is closed; the
// next one, with the bus back, applies them. Each restart used to seal
// every pending revocation anew, and so add a member to the store's set
// for each (two restarts: three members a revocation, each read by every
// node and counted against the set's bound); the tombstones sealed before
// a restart must be the ones written after it, after a kill (from the
// journal) as after a Close.
func TestRestartSealsNoNewTombstone(t *testing.T) {
	t.Parallel()
	bus := redistest.Start(t)
	storeURL := redistest.URL(t)
	farmName := farmtest.FarmName(t)
	secret := farm.NewSecret(1)
	dir := t.TempDir()
	file := filepath.Join(dir, "revocations")
	direct, err := redisbus.Open(storeURL, farmName)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	members := func() int {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		got, err := direct.SetMembers(ctx, farm.TombstoneKey)
		if err != nil {
			t.Fatal(err)
		}
		return len(got)
	}

	c := startChild(t, "TestRevTombChild", append(crashEnv(farmName, storeURL, file, secret, ""), revTombEnvBus+"="+bus.URL())...)
	c.await("joined")
	bus.Kill()
	c.tell("go")
	c.await("stored")
	c.kill()
	if got := members(); got != revTombCount {
		t.Fatalf("the store holds %d tombstones after the kill, want %d", got, revTombCount)
	}

	// Restarted after the kill, the bus still down.
	o := revTombOptions(bus.URL(), storeURL, secret, file)
	n1 := farmtest.Join(t, "n1", farmName, o)
	farmtest.Eventually(t, 10*time.Second, "the restarted n1 tried the revocations", func() bool {
		return farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_publish_errors_total") > 0
	})
	if p := n1.Node.PendingRevocations(); p != revTombCount {
		t.Fatalf("the restarted n1 has %d revocations pending, want %d", p, revTombCount)
	}
	if got := members(); got != revTombCount {
		t.Errorf("the store holds %d tombstones after a restart from the journal, want %d", got, revTombCount)
	}
	n1.Node.Close()

	// Restarted after a Close, the bus back.
	bus.Restart()
	n1 = farmtest.Join(t, "n1", farmName, o)
	farmtest.Eventually(t, 10*time.Second, "the revocations applied", func() bool { return n1.Node.PendingRevocations() == 0 })
	if got := members(); got != revTombCount {
		t.Errorf("the store holds %d tombstones after a restart from a closed node's file, want %d", got, revTombCount)
	}
}

// TestRevTombChild is n1 of TestRestartSealsNoNewTombstone, in a process
// of its own: it joins and says "joined", waits for a line (its bus is
// then down), queues revTombCount revocations, waits until their
// tombstones are in the store and their publish has failed, says
// "stored", and waits to be killed.
func TestRevTombChild(t *testing.T) {
	if os.Getenv(revTombEnvBus) == "" {
		t.Skip("n1 of TestRestartSealsNoNewTombstone, run by it")
	}
	b, err := hex.DecodeString(os.Getenv(crashEnvSecret))
	if err != nil {
		t.Fatal(err)
	}
	secret := farm.Secret{ID: 1, Bytes: b}
	m := farmtest.Join(t, "n1", os.Getenv(crashEnvFarm),
		revTombOptions(os.Getenv(revTombEnvBus), os.Getenv(crashEnvURL), secret, os.Getenv(crashEnvFile)))
	farmtest.WaitConnected(t, m)
	fmt.Println("joined")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	m.Node.QueueRevocations(revTombFirst, revTombCount, time.Now().Add(10*time.Minute))
	farmtest.Eventually(t, 10*time.Second, "the tombstones in the store, the publish failed", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		got, err := m.Store.(transport.Coordinator).SetMembers(ctx, farm.TombstoneKey)
		return err == nil && len(got) == revTombCount &&
			farmtest.Counter(m.Node.Metrics(), "tlsfarm_farm_publish_errors_total") > 0
	})
	if p := m.Node.PendingRevocations(); p != revTombCount {
		t.Fatalf("%d revocations pending, want %d", p, revTombCount)
	}
	fmt.Println("stored")
	select {}
}
