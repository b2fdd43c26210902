package farm_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/metric"
	"github.com/tlsfarm/tlsfarm/session"
)

// A node of a farm that shares sessions through Redis, as the bus and the
// store. Each server of the farm does the same with its own cache; the
// cache's tls.Config then resumes, on any node, sessions that any node
// issued.
func ExampleJoin() {
	name := "example-" + rand.Text()[:8] // in production, the farm's name
	tr, err := redisbus.Open("redis://127.0.0.1:6379/0", name)
	if err != nil {
		log.Fatal(err)
	}
	defer tr.Close()
	cache, err := session.New(&session.Config{Lifetime: time.Hour})
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()

	// In production every node reads the same secrets (farm.LoadSecrets);
	// here one node makes its own.
	node, err := farm.Join(context.Background(), farm.Config{
		Farm:    name,
		Secrets: []farm.Secret{farm.NewSecret(1)},
		Cache:   cache,
		Bus:     tr,
		Store:   tr,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer node.Close()

	for !node.Connected() { // Join does not wait for a transport that is down
		time.Sleep(10 * time.Millisecond)
	}
	// Revoking a session the farm never saw finds nothing.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	status, err := node.RevokeSession(ctx, session.ID{})
	fmt.Println("revoke:", status, err)
	// The node's counters are metric samples, as the admin API exports them.
	published, _ := metric.Value(node.Metrics(), "tlsfarm_farm_published_total", "kind", "session")
	fmt.Println("sessions published:", published)
	// Output:
	// revoke: not-found <nil>
	// sessions published: 0
}

// ConsumeToken answers true to exactly one caller in the whole farm for a
// token, such as a stateless ticket that must be used once: here two nodes
// of a farm on Redis present the same token, and only the first succeeds,
// however many nodes try and in whatever order. The store keeps only a
// hash of the token, which lapses after the TTL.
func ExampleNode_ConsumeToken() {
	secrets := []farm.Secret{farm.NewSecret(1)} // farm.LoadSecrets on every node
	name := "example-" + rand.Text()[:8]        // the farm's name
	var nodes []*farm.Node
	for range 2 { // each node is a server with its own cache and connection
		tr, err := redisbus.Open("redis://127.0.0.1:6379/0", name)
		if err != nil {
			log.Fatal(err)
		}
		defer tr.Close()
		cache, err := session.New(nil)
		if err != nil {
			log.Fatal(err)
		}
		defer cache.Close()
		node, err := farm.Join(context.Background(), farm.Config{
			Farm: name, Secrets: secrets, Cache: cache, Bus: tr, Store: tr,
		})
		if err != nil {
			log.Fatal(err)
		}
		defer node.Close()
		nodes = append(nodes, node)
	}

	token := []byte(rand.Text()) // what a client presented
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for _, try := range []struct {
		name string
		node *farm.Node
	}{{"a", nodes[0]}, {"b", nodes[1]}, {"a again", nodes[0]}} {
		ok, err := try.node.ConsumeToken(ctx, token, time.Minute)
		fmt.Printf("node %s: %v %v\n", try.name, ok, err)
	}
	// Output:
	// node a: true <nil>
	// node b: false <nil>
	// node a again: false <nil>
}

// A server stopping on SIGTERM: its last moments' sessions are written by
// Close as by Shutdown, but a revocation made while the store was down
// gets until the context's deadline to reach the store, not one
// operation timeout, so a store back within seconds still holds it.
func ExampleNode_Shutdown() {
	tr, err := redisbus.Open("redis://127.0.0.1:6379/0", "example")
	if err != nil {
		log.Fatal(err)
	}
	defer tr.Close()
	cache, err := session.New(nil)
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()
	node, err := farm.Join(context.Background(), farm.Config{
		Farm: "example", Secrets: []farm.Secret{farm.NewSecret(1)}, Cache: cache, Bus: tr, Store: tr,
	})
	if err != nil {
		log.Fatal(err)
	}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, os.Interrupt)
	<-stop // serve until asked to stop
	ctx, cancel := context.WithTimeout(context.Background(), 7*time.Second)
	defer cancel()
	node.Shutdown(ctx)
}
