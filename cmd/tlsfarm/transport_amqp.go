package main

import (
	"errors"
	"io"

	"github.com/tlsfarm/tlsfarm/farm"
)

// openAMQP opens the RabbitMQ transport: a Bus on a fanout exchange, and no
// Store.
//
// TODO(lead): wire farm/amqpbus here once it lands.
func openAMQP(rawURL, farmName string) (farm.Bus, farm.Store, io.Closer, error) {
	return nil, nil, nil, errors.New("the amqp transport is not built into this binary yet")
}
