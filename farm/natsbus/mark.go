package natsbus

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// How Subscribe marks its delivery (Transport.DeliveredThrough).
//
// A mark is taken on a goroutine of its own, every Options.MarkInterval
// while the subscription is up: the time t0, then a round trip to the
// server on the subscription's connection (nats.Conn.FlushWithContext).
// The server queues to a connection, in order, every message it routes to
// it, and answers the PING after every message it had taken from a
// publisher before it read the PING; nats.go's read loop puts each message
// into the subscription's pending list (or drops it, past the pending
// limits) before it reads the PONG that follows. So when the flush
// returns, every message the server took before t0 is in the pending list,
// has left it, or was dropped. The mark's target is then the
// subscription's pending count, read first, plus the count of messages the
// nats.go handler has handed to Subscribe's goroutine (marker.handled),
// read second: nats.go takes a message off the pending count only after
// the handler returned for it, and the handler counts it before it
// returns, so a message is in one of the two counts, or in both (counted
// twice: the target is too high, never too low). Subscribe's goroutine
// passes the messages to deliver in the order nats.go queued them, and
// once deliver has returned for target of them, t0 is reached.
//
// A message nats.go dropped (slow consumer) is in neither count and is
// never delivered: a mark does not wait for it. So the mark is zero from
// the first drop (marker.dropped) until Subscribe has reported the loss as
// a gap in the subscription (down, then up at once), which the farm
// settles as an outage; marks taken before the gap are thrown away. A
// message that is still to be delivered is always counted.
//
// Marks are good for the up period they were taken in: Subscribe resets
// the mark when it reports the subscription down, when it sees that the
// client reconnected, and when it returns, and a mark taken across a
// reconnect, or on a connection made since Subscribe last reported the
// subscription up, is thrown away.

// A marker is the delivery mark of one running Subscribe.
type marker struct {
	// through is the newest mark reached, as nanoseconds since
	// Transport.base plus one; 0 for none.
	through atomic.Int64
	// epoch numbers the up period the marks are taken for; 0 while the
	// subscription is not up (no marks are taken then).
	epoch atomic.Uint64
	// reconnects is the connection's reconnect count when Subscribe last
	// reported the subscription up.
	reconnects atomic.Uint64
	// handled counts the messages the nats.go handler has passed to
	// Subscribe's goroutine (or dropped as Subscribe ends).
	handled atomic.Int64
	// dropped is set from the first message nats.go drops (slow
	// consumer) until Subscribe has reported the gap: the mark is zero
	// meanwhile.
	dropped atomic.Bool
}

// A mark is a point of delivery to reach: once deliver has returned for
// target messages, every message the server took before t0 has been
// delivered.
type mark struct {
	t0         time.Time
	target     int64
	epoch      uint64
	reconnects uint64
}

// markQueue is the delivery side of a marker, owned by Subscribe's
// goroutine.
type markQueue struct {
	t      *Transport
	mk     *marker
	n      int64  // messages deliver has returned for
	epochs uint64 // up periods so far
	fifo   []mark // marks not yet reached, targets and times increasing
}

// delivered counts a message deliver has returned for, and reaches the
// marks it completes.
func (q *markQueue) delivered() {
	q.n++
	if len(q.fifo) > 0 && q.fifo[0].target <= q.n {
		q.reach()
	}
}

// add queues m, if it was taken for the current up period, in place of
// the older marks that need as many messages or more.
func (q *markQueue) add(m mark) {
	if m.epoch == 0 || m.epoch != q.mk.epoch.Load() || m.reconnects != q.mk.reconnects.Load() {
		return
	}
	for len(q.fifo) > 0 && q.fifo[len(q.fifo)-1].target >= m.target {
		q.fifo = q.fifo[:len(q.fifo)-1]
	}
	q.fifo = append(q.fifo, m)
	q.reach()
}

// reach publishes the newest mark delivery has reached, and forgets it and
// the ones before it.
func (q *markQueue) reach() {
	i := 0
	for i < len(q.fifo) && q.fifo[i].target <= q.n {
		i++
	}
	if i == 0 {
		return
	}
	q.mk.through.Store(int64(q.fifo[i-1].t0.Sub(q.t.base)) + 1)
	q.fifo = append(q.fifo[:0], q.fifo[i:]...)
}

// up starts marking for an up period that Subscribe has just reported,
// on the connection made after reconnects reconnects.
func (q *markQueue) up(reconnects uint64) {
	q.down()
	q.epochs++
	q.mk.reconnects.Store(reconnects)
	q.mk.epoch.Store(q.epochs)
}

// down forgets every mark: the subscription is down, was lost and made
// again, or Subscribe is returning.
func (q *markQueue) down() {
	q.mk.epoch.Store(0)
	q.mk.through.Store(0)
	q.fifo = q.fifo[:0]
}

// markLoop takes a mark of sub's delivery every interval while the
// subscription is up, and sends it to Subscribe's goroutine on marks,
// until done is closed.
func (t *Transport) markLoop(ctx context.Context, done <-chan struct{}, sub *nats.Subscription, mk *marker, interval time.Duration, marks chan<- mark) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		e := mk.epoch.Load()
		if e == 0 {
			continue
		}
		r := t.nc.Stats().Reconnects
		t0 := time.Now()
		fctx, cancel := context.WithTimeout(ctx, flushTimeout)
		err := t.nc.FlushWithContext(fctx)
		cancel()
		if err != nil {
			continue
		}
		pending, _, err := sub.Pending() // first: see above
		if err != nil {
			continue
		}
		handled := mk.handled.Load()
		// A reconnect since r: the PONG may have come on another
		// connection than the PING, after an outage not yet reported.
		if t.nc.Stats().Reconnects != r || mk.epoch.Load() != e {
			continue
		}
		select {
		case marks <- mark{t0: t0, target: int64(pending) + handled, epoch: e, reconnects: r}:
		case <-done:
			return
		}
	}
}

// DeliveredThrough implements transport.DeliveryMarker. While a Subscribe
// runs with its subscription up, it returns the newest time t0 such that
// every message the server had taken before t0 was passed to that
// Subscribe's deliver function, which returned for it, or was dropped by
// the client for want of room (a slow consumer, counted by Dropped) before
// a gap that Subscribe reported (see below). It is marked every
// Options.MarkInterval, so while delivery keeps up it trails time.Now by
// about an interval and a round trip to the server.
//
// It returns the zero Time while no Subscribe runs, while the subscription
// is not up (from when Subscribe sees it lost, or the connection lost and
// made again, until it reports it up and a mark is reached after that),
// from when the client drops a message for want of room until Subscribe
// has reported the gap and a mark is reached after that, and when
// Options.MarkInterval is negative.
//
// The time is exact for messages published to the server the subscriber
// is connected to. A message published to another server of a cluster is
// covered once that server has passed it on to this one, which is not
// awaited.
func (t *Transport) DeliveredThrough() time.Time {
	mk := t.mark.Load()
	if mk == nil {
		return time.Time{}
	}
	d := mk.through.Load()
	if d == 0 || mk.dropped.Load() {
		return time.Time{}
	}
	// Zero at once on an outage that Subscribe has not yet seen.
	if !t.sameConnection(mk.reconnects.Load()) {
		return time.Time{}
	}
	return t.base.Add(time.Duration(d - 1))
}
