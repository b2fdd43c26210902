package main

import (
	"io"

	"github.com/tlsfarm/tlsfarm/farm/amqpbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// openAMQP opens the RabbitMQ transport: a Bus on a fanout exchange, and no
// Store (so no lookups on a miss, no write-through, and ticket keys rotate
// locally).
func openAMQP(rawURL, farmName string) (transport.Bus, transport.Store, io.Closer, error) {
	b, err := amqpbus.Open(rawURL, farmName, nil)
	if err != nil {
		return nil, nil, nil, err
	}
	return b, nil, b, nil
}
