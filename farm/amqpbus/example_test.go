package amqpbus_test

import (
	"context"
	"log"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/amqpbus"
	"github.com/tlsfarm/tlsfarm/session"
)

// A node of a farm that shares sessions over RabbitMQ. Without a store the
// farm runs in broadcast mode: every node holds every session it was
// subscribed to receive.
func Example() {
	bus, err := amqpbus.Open("amqp://guest:guest@127.0.0.1:5672/", "prod", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer bus.Close()

	cache, err := session.New(&session.Config{Lifetime: time.Hour})
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()
	secrets, err := farm.LoadSecrets("/etc/tlsfarm/farm.secret")
	if err != nil {
		log.Fatal(err)
	}
	node, err := farm.Join(context.Background(), farm.Config{
		Farm:    "prod",
		Secrets: secrets,
		Cache:   cache,
		Bus:     bus, // no Store: broadcast mode
	})
	if err != nil {
		log.Fatal(err)
	}
	defer node.Close()
	// cache.Install(tlsConfig) then serves with farm-wide resumption.
}
