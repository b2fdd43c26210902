package natsbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redact"
)

// flushTimeout bounds a Publish whose context has no deadline: nats.go's
// flush needs one.
const flushTimeout = 5 * time.Second

// errNotConnected is the state reported while the client reconnects.
var errNotConnected = errors.New("natsbus: not connected to NATS")

// errReconnected is the state reported for an outage over before the
// subscriber saw it begin.
var errReconnected = errors.New("natsbus: connection to NATS was lost and made again")

// errDropped is the state reported, down, for a gap in the subscription:
// the client dropped bus messages for want of room (a slow consumer) with
// the connection up. Up is reported again at once.
// It wraps transport.ErrMessagesDropped, by which the farm tells such a gap
// from an outage in its logs and metrics.
var errDropped = fmt.Errorf("natsbus: the NATS client dropped bus messages for want of room (slow consumer); the subscription stays, and the farm settles the loss as a gap: %w", transport.ErrMessagesDropped)

// errClosed is returned by Subscribe when the connection is closed for good.
var errClosed = errors.New("natsbus: connection closed")

// Publish implements transport.Bus: it publishes every message on the farm's
// subject, then flushes once, so that a batch costs one round trip and has
// reached the server when Publish returns nil. While the connection is
// down it fails at once rather than buffering: the farm counts what it
// could not publish, and its peers catch up from the store. It also fails
// when the server says it refused the batch (the user may not publish to
// the farm's subject), read from the connection's last error.
func (t *Transport) Publish(ctx context.Context, msgs ...[]byte) error {
	if st := t.nc.Status(); st != nats.CONNECTED {
		return fmt.Errorf("natsbus: publish: connection is %v", st)
	}
	errBefore := t.nc.LastError()
	for _, m := range msgs {
		if err := t.nc.Publish(t.subject, m); err != nil {
			return fmt.Errorf("natsbus: publish: %v", redact.Error(err, t.secrets))
		}
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, flushTimeout)
		defer cancel()
	}
	if err := t.nc.FlushWithContext(ctx); err != nil {
		return fmt.Errorf("natsbus: publish: %w", err)
	}
	// A server that may not take the messages (the user may not publish
	// to the subject) drops them and says so before it answers the
	// flush's ping; nats.go only records it.
	if err := t.nc.LastError(); err != nil && err != errBefore && errors.Is(err, nats.ErrPermissionViolation) &&
		strings.Contains(err.Error(), "Publish to "+strconv.Quote(t.subject)) {
		return fmt.Errorf("natsbus: publish: the server refused the messages: %v", redact.Error(err, t.secrets))
	}
	return nil
}

// Subscribe implements transport.Bus. It subscribes once: nats.go reconnects on
// its own and resubscribes on every reconnect, and Subscribe reports each
// change of the connection's state. It returns ctx.Err() when ctx is done,
// an error if the connection is closed for good, and an error if the
// server refuses the subscription (the user may not subscribe to the
// farm's subject), so that the farm counts the bus down and subscribes
// again later rather than wait for messages that never come. When the
// client drops messages for want of room (a slow consumer; see Dropped),
// Subscribe reports the subscription down, then up again at once, as soon
// as deliver has returned: a gap, which the farm settles as it does an
// outage (it checks its cache against the store, reads the revocations,
// asks its peers to re-send), while the connection and subscription stay. The refusal
// is read from the connection's last error: a connection whose error
// handler hides it is still caught, but one whose last error is replaced
// before Subscribe reads it is not. While the subscription is up, Subscribe
// marks its delivery every Options.MarkInterval for DeliveredThrough.
func (t *Transport) Subscribe(ctx context.Context, deliver func([]byte), state func(bool, error)) error {
	// A status listener rather than the connection's handlers: they belong
	// to whoever made the connection, and there is only one of each.
	status := t.nc.StatusChanged()
	defer t.nc.RemoveStatusListener(status)

	// nats.go runs the handler on the subscription's own goroutine and
	// queues behind it (up to its pending limits); hand each message to
	// this goroutine so that deliver and state are called from one.
	msgs := make(chan []byte, 64)
	// The delivery mark (DeliveredThrough): the handler counts what it
	// passed on, and this goroutine what deliver returned for.
	mk := &marker{}
	q := &markQueue{t: t, mk: mk}
	// The server may refuse the subscription (the node's user may not
	// subscribe to the subject): nats.go then only records the error and
	// passes it to the connection's error handler, and the subscription
	// looks in place. An error recorded since this one is such a refusal
	// if it names the subject.
	errBefore := t.nc.LastError()
	refused := func() error {
		err := t.nc.LastError()
		if err == nil || err == errBefore {
			return nil
		}
		switch {
		case errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), "Subscription to "+strconv.Quote(t.subject)):
		case errors.Is(err, nats.ErrMaxSubscriptionsExceeded):
			// The server names no subject; the bus subscription is
			// the one just made. Subscribing again later costs little
			// if it was another.
		default:
			return nil
		}
		return fmt.Errorf("natsbus: the server refused the bus subscription: %v", redact.Error(err, t.secrets))
	}
	sub, err := t.nc.Subscribe(t.subject, func(m *nats.Msg) {
		select {
		case msgs <- m.Data:
		case <-ctx.Done():
		}
		mk.handled.Add(1)
	})
	if err != nil {
		return fmt.Errorf("natsbus: subscribe: %v", redact.Error(err, t.secrets))
	}
	// A slow consumer is the only change of the subscription's own
	// status that matters here (the connection's are reported below).
	subStatus := sub.StatusChanged(nats.SubscriptionSlowConsumer)
	if err := t.setPendingLimits(sub); err != nil {
		sub.Unsubscribe()
		return err
	}
	t.addSub(sub)
	done := make(chan struct{})
	defer func() {
		close(done)
		q.down()
		t.mark.CompareAndSwap(mk, nil)
		t.removeSub(sub)
		sub.Unsubscribe()
	}()
	var marks chan mark // nil, never ready, without marking
	if interval := t.markInterval(); interval > 0 {
		marks = make(chan mark, 1)
		t.mark.Store(mk)
		go t.markLoop(ctx, done, sub, mk, interval, marks)
	}
	// nats.go drops a message for want of room (and goes on dropping
	// until a message fits again) with the connection up. What was
	// dropped may be a revocation, a retirement, a grace cut: the loss is
	// reported to the farm as a gap in the subscription (down, then up at
	// once; see reportDropped), which the farm settles as it does an
	// outage, rather than left to its tallies an interval or more later.
	// Watched on a goroutine of its own, as this one may be the one held
	// up: it holds the delivery mark at zero from the first drop until
	// this goroutine has reported the gap, and signals it on lost.
	// nats.go reports an episode once and goes on dropping without a word
	// while nothing fits: the watcher follows the count until it stops
	// growing.
	lost := make(chan struct{}, 1)
	signalLost := func() {
		mk.dropped.Store(true)
		select {
		case lost <- struct{}{}:
		default:
		}
	}
	go func() {
		poll := time.NewTimer(dropPoll)
		poll.Stop()
		var last int
		for {
			select {
			case <-done:
				poll.Stop()
				return
			case _, ok := <-subStatus:
				if !ok {
					return
				}
				t.slow.Add(1)
				t.warnDropped()
			case <-poll.C:
			}
			d, err := sub.Dropped()
			if err != nil || d == last {
				continue // the episode is over: wait for the next
			}
			last = d
			signalLost()
			poll.Reset(dropPoll)
		}
	}()
	// reported is what nats.go had dropped when the last gap was
	// reported.
	var reported int
	// reportDropped reports the messages nats.go dropped since it last did
	// as a gap in the subscription, if it is up: down, then up at once
	// (the subscription stays in place). A subscription that is down
	// reports its gap when it comes back.
	var reportDropped func()
	var lastGap time.Time         // when the last gap was reported
	var gapLater <-chan time.Time // a gap held back (gapEvery), or nil

	up := false
	downErr := func() error {
		// A slow consumer sets the connection's last error too, but
		// is no reason for an outage.
		if err := t.nc.LastError(); err != nil && !errors.Is(err, nats.ErrSlowConsumer) {
			return fmt.Errorf("natsbus: %v", redact.Error(err, t.secrets))
		}
		return errNotConnected
	}
	// A reconnect seen only once it is over (its status events read
	// after the fact, or dropped) is still an outage: what was
	// published meanwhile is lost, and the farm asks for it only after
	// a down and an up.
	seen := t.nc.Stats().Reconnects
	report := func() error {
		now := t.nc.Status() == nats.CONNECTED
		if r := t.nc.Stats().Reconnects; r != seen {
			seen = r
			q.down()
			if up {
				up = false
				state(false, errReconnected)
			}
		}
		if now && !up {
			// The subscription is in place once the server has answered
			// a ping sent after it.
			fctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			err := t.nc.FlushWithContext(fctx)
			cancel()
			if err != nil {
				return nil // the next status change or tick tries again
			}
		}
		// The server answers a refused subscription before that ping:
		// a refusal is an outage, and the farm subscribes again later
		// (the operator may be fixing the permissions).
		if err := refused(); err != nil {
			q.down()
			if up {
				state(false, err)
			}
			return err
		}
		if now == up {
			return nil
		}
		up = now
		if up {
			state(true, nil)
			// Marks are taken from now on: none before the farm
			// heard of the up period.
			q.up(seen)
			return nil
		}
		q.down()
		state(false, downErr())
		return nil
	}
	reportDropped = func() {
		// The flag first: a drop counted after the read below sets it
		// again, and signals again.
		mk.dropped.Store(false)
		d, err := sub.Dropped()
		if err != nil || d <= reported {
			return
		}
		if !up {
			reported = d
			return
		}
		// The first drop of an episode is reported at once; the drops
		// that follow it at most every gapEvery, the mark zero
		// meanwhile: each gap costs the farm a pass over its cache.
		if wait := gapEvery - time.Since(lastGap); !lastGap.IsZero() && wait > 0 {
			mk.dropped.Store(true)
			if gapLater == nil {
				gapLater = time.After(wait)
			}
			return
		}
		reported, lastGap = d, time.Now()
		q.down()
		state(false, errDropped)
		state(true, nil)
		// A new up period: marks taken before the gap are thrown away.
		q.up(seen)
	}
	if t.nc.IsConnected() {
		if err := report(); err != nil {
			return err
		}
	} else {
		state(false, downErr())
	}
	// The status listener drops events when its buffer is full; a slow
	// tick re-reads the state so that no change is missed for long.
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case m := <-msgs:
			if ctx.Err() != nil {
				// select picks at random among ready cases: deliver
				// nothing once ctx is done.
				return ctx.Err()
			}
			deliver(m)
			q.delivered()
		case m := <-marks:
			q.add(m)
		case <-lost:
			reportDropped()
		case <-gapLater:
			gapLater = nil
			reportDropped()
		case s, ok := <-status:
			if !ok || s == nats.CLOSED || t.nc.IsClosed() {
				return errClosed
			}
			if err := report(); err != nil {
				return err
			}
		case <-tick.C:
			if t.nc.IsClosed() {
				return errClosed
			}
			if err := report(); err != nil {
				return err
			}
			reportDropped()
			t.warnDropped()
		}
	}
}

// dropWarnEvery bounds how often the transport logs the messages nats.go
// dropped (slow consumer).
const dropWarnEvery = time.Minute

// gapEvery is how often at most Subscribe reports the messages nats.go
// drops (slow consumer) as a gap in the subscription, after the first of
// an episode: a node that stays slow would otherwise have the farm
// reconcile its whole cache at every drop. Its delivery mark is zero while
// a drop waits to be reported.
const gapEvery = 250 * time.Millisecond

// dropPoll is how often the transport reads the count of messages nats.go
// dropped while an episode of a slow consumer goes on.
const dropPoll = 5 * time.Millisecond

// markInterval returns how often Subscribe marks its delivery, or 0 for
// never.
func (t *Transport) markInterval() time.Duration {
	switch d := t.opts.MarkInterval; {
	case d < 0:
		return 0
	case d == 0:
		return DefaultMarkInterval
	default:
		return d
	}
}

// setPendingLimits applies Options.PendingMsgs and PendingBytes to sub.
func (t *Transport) setPendingLimits(sub *nats.Subscription) error {
	m, b := t.opts.PendingMsgs, t.opts.PendingBytes
	if m == 0 && b == 0 {
		return nil
	}
	if m == 0 {
		m = nats.DefaultSubPendingMsgsLimit
	}
	if b == 0 {
		b = nats.DefaultSubPendingBytesLimit
	}
	if err := sub.SetPendingLimits(m, b); err != nil {
		return fmt.Errorf("natsbus: subscription pending limits: %v", err)
	}
	return nil
}

func (t *Transport) addSub(sub *nats.Subscription) {
	t.subMu.Lock()
	if t.subs == nil {
		t.subs = make(map[*nats.Subscription]struct{})
	}
	t.subs[sub] = struct{}{}
	t.subMu.Unlock()
}

// removeSub forgets sub (before it is unsubscribed: nats.go counts its
// drops until then), keeping what it dropped.
func (t *Transport) removeSub(sub *nats.Subscription) {
	t.subMu.Lock()
	if n, err := sub.Dropped(); err == nil && n > 0 {
		t.dropBase += uint64(n)
	}
	delete(t.subs, sub)
	t.subMu.Unlock()
}

// Dropped returns how many bus messages nats.go has dropped, over the
// transport's life, because they arrived while the subscription's pending
// limits were full (Options.PendingMsgs, PendingBytes): the node handled
// them more slowly than they came. The connection stays up meanwhile;
// Subscribe reports each drop as a gap in the subscription.
func (t *Transport) Dropped() uint64 {
	t.subMu.Lock()
	defer t.subMu.Unlock()
	n := t.dropBase
	for sub := range t.subs {
		if d, err := sub.Dropped(); err == nil && d > 0 {
			n += uint64(d)
		}
	}
	return n
}

// SlowConsumers returns how many times the bus subscription became a slow
// consumer: began to drop messages (see Dropped), after it had caught up
// or at first.
func (t *Transport) SlowConsumers() uint64 { return t.slow.Load() }

// warnDropped logs the messages dropped since it last did, at most once
// every dropWarnEvery.
func (t *Transport) warnDropped() {
	d := t.Dropped()
	t.warnMu.Lock()
	defer t.warnMu.Unlock()
	if d == t.warnedAt || !t.warned.IsZero() && time.Since(t.warned) < dropWarnEvery {
		return
	}
	slog.Warn("natsbus: slow consumer: the NATS client dropped bus messages that came faster than this node handled them; the connection stays up, and the loss is reported to the farm as a gap in the subscription (logged at most once a minute)",
		"dropped", d-t.warnedAt, "dropped_total", d, "episodes", t.slow.Load())
	t.warned, t.warnedAt = time.Now(), d
}
