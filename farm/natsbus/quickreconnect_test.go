package natsbus_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tlsfarm/tlsfarm/internal/nettest"
)

// TestSubscribeReportsQuickReconnect checks that a connection lost and
// made again while the subscriber is busy (delivering a message) is
// reported as an outage: the messages published in the gap are gone, and
// the farm only asks for them after a down and up.
func TestSubscribeReportsQuickReconnect(t *testing.T) {
	t.Parallel()
	url := embedded(t)
	px := nettest.NewProxy(t, url[len("nats://"):])
	tr := open(t, "nats://"+px.Addr, "quick-reconnect")
	pub, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	states := make(chan bool, 16)
	entered, release := make(chan struct{}, 1), make(chan struct{})
	go tr.Subscribe(ctx, func([]byte) {
		entered <- struct{}{}
		<-release
	}, func(up bool, _ error) { states <- up })
	select {
	case up := <-states:
		if !up {
			t.Fatal("first state is down")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("subscription never came up")
	}
	// Hold the subscriber in deliver, then cut the connection and let
	// the client reconnect at once.
	if err := pub.Publish(tr.Subject(), []byte("x")); err != nil {
		t.Fatal(err)
	}
	pub.Flush()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("no message delivered")
	}
	before := tr.Conn().Stats().Reconnects
	px.Cut()
	px.Restore()
	deadline := time.Now().Add(10 * time.Second)
	for tr.Conn().Stats().Reconnects == before || !tr.Conn().IsConnected() {
		if time.Now().After(deadline) {
			t.Fatal("client did not reconnect")
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(release)
	timeout := time.After(5 * time.Second)
	for {
		select {
		case up := <-states:
			if !up {
				return // the outage was reported
			}
		case <-timeout:
			t.Fatal("a lost and remade connection was never reported down: the farm does not learn of the gap")
		}
	}
}
