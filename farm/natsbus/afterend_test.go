package natsbus_test

import (
	"testing"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
)

// TestNoDeliveryAfterContextEnds: a message already queued when
// Subscribe's context ends is dropped, not handed to a node that is
// closing (Subscribe's select once picked a waiting message over the ended
// context half the time).
func TestNoDeliveryAfterContextEnds(t *testing.T) {
	url := sharedURL(t)
	name := farmtest.FarmName(t)
	farmtest.NoDeliveryAfterContextEnds(t, open(t, url, name), open(t, url, name))
}
