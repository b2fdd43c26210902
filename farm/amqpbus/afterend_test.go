package amqpbus_test

import (
	"testing"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
)

// TestNoDeliveryAfterContextEnds: a message already received when
// Subscribe's context ends is left for the queue (unacknowledged, it comes
// again), not handed to a node that is closing (Subscribe's select once
// picked a waiting delivery over the ended context half the time).
func TestNoDeliveryAfterContextEnds(t *testing.T) {
	b := open(t, brokerURL(t), farmtest.FarmName(t), nil)
	farmtest.NoDeliveryAfterContextEnds(t, b, b)
}
