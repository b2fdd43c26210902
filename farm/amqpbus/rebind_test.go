package amqpbus_test

import (
	"errors"
	"testing"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// TestExchangeDeletedWhileSubscribed: the farm's exchange is deleted (an
// operator's clean-up) while a subscriber stays connected. The broker
// drops its binding with the exchange and tells it nothing: it heard
// nothing more, even once a publisher had declared the exchange again,
// until its connection failed for another reason. It now binds its queue
// again every few seconds: it finds the exchange gone, connects again
// (declaring it), and reports transport.ErrMessagesLost; then it hears
// the farm again.
func TestExchangeDeletedWhileSubscribed(t *testing.T) {
	url := brokerURL(t)
	name := farmtest.FarmName(t)
	pub := open(t, url, name, nil)
	sub := open(t, url, name, nil)
	l, _ := subscribeLogged(t, sub)
	if err := l.next(t, true); err != nil {
		t.Fatalf("subscribed with %v", err)
	}
	publish(t, pub, "before")
	l.waitFor(t, "before")
	if err := brokerChannel(t, url).ExchangeDelete(sub.Exchange(), false, false); err != nil {
		t.Fatal(err)
	}
	if err := l.next(t, false); err == nil {
		t.Fatal("down with no error")
	}
	if err := l.next(t, true); !errors.Is(err, transport.ErrMessagesLost) {
		t.Fatalf("back up with %v, want transport.ErrMessagesLost", err)
	}
	publish(t, pub, "after")
	l.waitFor(t, "after")
}
