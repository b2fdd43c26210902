package main

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/natsbus/natsembed"
	"github.com/tlsfarm/tlsfarm/internal/natstest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/testenv"
)

// TestDaemonWritesBackAfterNATSRestartedEmpty runs two daemons on a NATS
// server (JetStream) that restarts without its data: the nodes find the
// farm's store emptied, node-1 writes its sessions back, and node-3, which
// joins afterwards with an empty cache, resumes a session node-1 issued
// before the restart (store-only, so that node-3 can only have it from the
// store). On the machine's nats-server and on an in-process current one.
// The daemon recovered before natsbus checked its streams after a timed-out
// call too: its ticket key rotation reads the server's clock by calls
// (stream information, a synchronous write) that fail at once on a missing
// stream and so made the transport find its buckets gone; a farm.Node
// without farm-wide ticket keys did not (natsbus
// TestStoreWorksAfterServerRestartedEmpty).
func TestDaemonWritesBackAfterNATSRestartedEmpty(t *testing.T) {
	t.Parallel()
	for _, server := range []string{"process", "embedded"} {
		t.Run(server, func(t *testing.T) {
			t.Parallel()
			writesBackAfterNATSRestartedEmpty(t, server)
		})
	}
}

// restartableNATS starts a NATS server with JetStream on a free loopback
// port — the machine's nats-server, or an in-process one — and returns its
// port and a function that restarts it there with an empty store
// directory. It stops when the test ends.
func restartableNATS(t *testing.T, server string) (int, func()) {
	t.Helper()
	port := testenv.FreePort(t)
	name := fmt.Sprintf("tlsfarm-test-%d", rand.Uint64())
	var stop func()
	// launch starts the server once on port.
	launch := func() error {
		if server == "embedded" {
			srv, err := natsembed.Start(&natsembed.Config{Port: port, Dir: t.TempDir(), StartTimeout: testenv.StartTimeout})
			if err != nil {
				return fmt.Errorf("%w: %v", testenv.ErrPortTaken, err) // the likely cause
			}
			stop = srv.Shutdown
			return nil
		}
		p, err := testenv.StartProc(natstest.Bin(t), "-a", "127.0.0.1", "-p", fmt.Sprint(port), "-js", "-sd", t.TempDir(),
			"--server_name", name)
		if err != nil {
			return err
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		if err := p.WaitReady(testenv.StartTimeout, func() error { return natstest.Answers(addr, name) }); err != nil {
			return err
		}
		stop = p.Kill
		return nil
	}
	// The first start moves to another port if its port was taken; a
	// restart waits for its port to be free.
	var err error
	for range 4 {
		if err = launch(); !errors.Is(err, testenv.ErrPortTaken) {
			break
		}
		t.Logf("nats-server: port %d: %v; trying another", port, err)
		port = testenv.FreePort(t)
	}
	if err != nil {
		t.Fatalf("nats-server did not start: %v", err)
	}
	t.Cleanup(func() { stop() })
	return port, func() {
		t.Helper()
		stop()
		deadline := time.Now().Add(testenv.StartTimeout)
		for {
			err := launch()
			if err == nil {
				return
			}
			if !errors.Is(err, testenv.ErrPortTaken) || time.Now().After(deadline) {
				t.Fatalf("nats-server did not start again on port %d: %v", port, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

func writesBackAfterNATSRestartedEmpty(t *testing.T, server string) {
	port, restartEmpty := restartableNATS(t, server)
	secret, cert, key, leaf := farmFiles(t)
	name := redistest.Farm(t)
	var nodes []*proc
	add := func() *proc {
		t.Helper()
		p := serveProc(t, []string{"-node", fmt.Sprintf("node-%d", len(nodes)+1), "-cert", cert, "-key", key,
			"-farm", fmt.Sprintf("nats://127.0.0.1:%d", port), "-farm-secret", secret, "-farm-name", name,
			"-farm-mode", "store-only"})
		nodes = append(nodes, p)
		waitUntil(t, 15*time.Second, func() bool { s, c := farmState(t, p); return c && s == "ok" }, "a node did not join the farm")
		return p
	}
	n1, _ := add(), add()
	client := clientFor("localhost", leaf)
	getFacts(t, n1.Listeners[0], client)
	waitUntil(t, 10*time.Second, func() bool { return metric(t, n1, "tlsfarm_farm_store_writes_total") >= 1 },
		"node-1's session did not reach the store")

	restartEmpty()
	restarted := time.Now()
	for _, p := range nodes {
		waitUntil(t, 15*time.Second, func() bool { s, c := farmState(t, p); return c && s == "ok" },
			"a node did not come back to the farm after NATS restarted")
	}
	waitUntil(t, 15*time.Second, func() bool { return metric(t, n1, "tlsfarm_farm_written_back_total") >= 1 },
		"node-1 wrote nothing back to the emptied store")
	t.Logf("node-1 wrote its sessions back %v after NATS restarted empty", time.Since(restarted).Round(time.Millisecond))
	n3 := add()
	// A lookup that misses its deadline on a loaded machine is a full
	// handshake that leaves the session as it was: try again.
	waitUntil(t, 5*time.Second, func() bool { return getFacts(t, n3.Listeners[0], clientWithSessionOf(client)).Resumed },
		"node-1's session did not resume on node-3, which joined after NATS restarted empty")
}
