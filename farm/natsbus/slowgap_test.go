package natsbus_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// TestSlowConsumerReportedAsGap: deliver holds the first message while a
// plain connection publishes past the subscription's pending limit, so that
// nats.go drops messages with the connection up. From the first drop the
// delivery mark is zero (it used to stay at its last value, not waiting
// for what was dropped); once deliver returns, Subscribe reports the
// subscription down and up again at once (a gap, which the farm settles as
// an outage: before, it reported nothing and the farm learnt of the loss
// only from its tallies), with an error that wraps
// transport.ErrMessagesDropped, and the mark comes back after a new mark.
func TestSlowConsumerReportedAsGap(t *testing.T) {
	tr, pub := openMarked(t, &natsbus.Options{MarkInterval: 10 * time.Millisecond, PendingMsgs: 20})
	hold := make(chan struct{})
	held := make(chan struct{}, 1)
	states, _ := subscribeStates(t, tr, func([]byte) {
		select {
		case held <- struct{}{}:
			<-hold
		default:
		}
	})
	var once sync.Once
	release := func() { once.Do(func() { close(hold) }) }
	t.Cleanup(release) // before Subscribe is stopped: a held deliver ends
	waitState(t, states, true)
	waitMark(t, tr)

	msg := make([]byte, 100)
	for i := 0; tr.Dropped() == 0; i++ {
		if i == 1000 {
			t.Fatal("nats.go dropped nothing after 1000 messages to a held subscription")
		}
		if err := pub.Publish(tr.Subject(), msg); err != nil {
			t.Fatal(err)
		}
		if i%10 == 9 {
			if err := pub.Flush(); err != nil {
				t.Fatal(err)
			}
			if err := tr.Conn().Flush(); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The watcher reads the count within a poll of the drop.
	deadline := time.Now().Add(time.Second)
	for !tr.DeliveredThrough().IsZero() {
		if time.Now().After(deadline) {
			t.Fatalf("DeliveredThrough = %v a second after nats.go dropped messages; want zero until the gap is reported", tr.DeliveredThrough())
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case s := <-states:
		t.Fatalf("a state (up=%t) reported while deliver was held", s.up)
	default:
	}

	released := time.Now()
	release()
	downAt := waitStateAt(t, states, false)
	down := downAt.at
	up := waitState(t, states, true)
	// The farm tells the gap from an outage by its error.
	if !errors.Is(downAt.err, transport.ErrMessagesDropped) {
		t.Errorf("the gap was reported down with %v; want it to wrap transport.ErrMessagesDropped", downAt.err)
	}
	t.Logf("gap reported %v after deliver was released (down, then up %v later); %d dropped",
		down.Sub(released).Round(time.Microsecond), up.Sub(down).Round(time.Microsecond), tr.Dropped())
	if d := down.Sub(released); d > 500*time.Millisecond {
		t.Errorf("the gap was reported %v after deliver was free", d)
	}
	if m := waitMark(t, tr); m.Before(up) {
		t.Errorf("mark %v after the gap is from before it was reported (%v)", m, up)
	}
}
