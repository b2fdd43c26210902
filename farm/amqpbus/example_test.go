package amqpbus_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"log"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/amqpbus"
	"github.com/tlsfarm/tlsfarm/metric"
	"github.com/tlsfarm/tlsfarm/session"
)

// A node of a farm that shares sessions over RabbitMQ (here the machine's,
// as guest). Without a store the farm runs in broadcast mode: every node
// holds every session it was subscribed to receive. The node's queue
// outlives its connection for two minutes, then lapses.
func Example() {
	name := "example-" + rand.Text()[:8] // in production, the farm's name
	bus, err := amqpbus.Open("amqp://guest:guest@127.0.0.1:5672/", name, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer bus.Close()

	cache, err := session.New(&session.Config{Lifetime: time.Hour})
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()
	// In production every node reads the same secrets:
	// farm.LoadSecrets("/etc/tlsfarm/farm.secret").
	node, err := farm.Join(context.Background(), farm.Config{
		Farm:    name,
		Secrets: []farm.Secret{farm.NewSecret(1)},
		Cache:   cache,
		Bus:     bus, // no Store: broadcast mode
	})
	if err != nil {
		log.Fatal(err)
	}
	defer node.Close()
	// cache.Install(tlsConfig) then serves with farm-wide resumption.

	for deadline := time.Now().Add(10 * time.Second); !node.Connected(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			log.Fatal("RabbitMQ did not answer within 10s")
		}
	}
	fmt.Println("connected:", node.Connected())
	published, _ := metric.Value(node.Metrics(), "tlsfarm_farm_published_total", "kind", "session")
	fmt.Println("sessions published:", published)
	// Output:
	// connected: true
	// sessions published: 0
}
