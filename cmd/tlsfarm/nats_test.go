package main

import (
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/internal/natstest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/testenv"
)

// TestTwoNodesShareSessionsOverNATS checks the NATS transport end to end: a
// session made on one node resumes on the other.
func TestTwoNodesShareSessionsOverNATS(t *testing.T) {
	t.Parallel()
	testenv.NeedTCP(t, "NATS", "127.0.0.1:4222")
	secret, cert, key, leaf := farmFiles(t)
	name := redistest.Farm(t)
	t.Cleanup(func() { deleteNATSBucket(t, name) })
	var nodes []*proc
	for _, n := range []string{"nats-a", "nats-b"} {
		nodes = append(nodes, serveProc(t, []string{"-node", n, "-cert", cert, "-key", key, "-farm", "nats://127.0.0.1:4222", "-farm-secret", secret, "-farm-name", name}))
	}
	for _, p := range nodes {
		waitUntil(t, 10*time.Second, func() bool { _, c := farmState(t, p); return c }, "a node did not connect to NATS")
	}
	client := clientFor("localhost", leaf)
	getFacts(t, nodes[0].Listeners[0], client)
	resumed := false
	for try := 0; try < 50 && !resumed; try++ {
		time.Sleep(20 * time.Millisecond)
		resumed = getFacts(t, nodes[1].Listeners[0], clientWithSessionOf(client)).Resumed
	}
	if !resumed {
		t.Error("a session from nats-a did not resume on nats-b")
	}
}

// deleteNATSBucket removes the key-value bucket the farm made on the shared
// server, so that test runs leave nothing behind.
func deleteNATSBucket(t *testing.T, farmName string) {
	tr, err := natsbus.Open("nats://127.0.0.1:4222", farmName, nil)
	if err != nil {
		t.Log(err)
		return
	}
	defer tr.Close()
	natstest.DeleteBuckets(t, tr.Conn(), tr.Bucket(), tr.RecordBucket())
}
