package redisbus_test

import (
	"testing"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// TestNoDeliveryAfterContextEnds: Subscribe hands no message to a node
// whose context has ended, as over NATS and RabbitMQ.
func TestNoDeliveryAfterContextEnds(t *testing.T) {
	url := redistest.URL(t)
	name := farmtest.FarmName(t)
	farmtest.NoDeliveryAfterContextEnds(t, open(t, url, name), open(t, url, name))
}
