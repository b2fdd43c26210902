package natsbus_test

import (
	"context"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
)

// subscribeStates runs tr.Subscribe with deliver until the test ends or the
// returned stop is called (which waits until Subscribe returned), sending
// each state it reports, with the time it did, on the returned channel.
func subscribeStates(t *testing.T, tr *natsbus.Transport, deliver func([]byte)) (<-chan stateAt, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	states := make(chan stateAt, 64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tr.Subscribe(ctx, deliver, func(up bool, err error) { states <- stateAt{up, time.Now(), err} })
	}()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return states, stop
}

type stateAt struct {
	up  bool
	at  time.Time
	err error
}

// waitState waits for the next state reported to be want, and returns when
// it was reported.
func waitState(t *testing.T, states <-chan stateAt, want bool) time.Time {
	t.Helper()
	return waitStateAt(t, states, want).at
}

// waitStateAt is waitState returning the state whole, with its error.
func waitStateAt(t *testing.T, states <-chan stateAt, want bool) stateAt {
	t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case s := <-states:
			if s.up == want {
				return s
			}
		case <-timeout:
			t.Fatalf("the subscription was not reported up=%t within 15s", want)
		}
	}
}

// waitMark waits until DeliveredThrough is not zero and returns it.
func waitMark(t *testing.T, tr *natsbus.Transport) time.Time {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if m := tr.DeliveredThrough(); !m.IsZero() {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatal("DeliveredThrough stayed zero for 10s with the subscription up")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestDeliveredThroughFollowsSubscription checks that the delivery mark is
// zero before Subscribe, follows the present while the subscription is up
// and idle, and is zero again once Subscribe has returned.
func TestDeliveredThroughFollowsSubscription(t *testing.T) {
	t.Parallel()
	tr := open(t, sharedURL(t), farmtest.FarmName(t))
	if m := tr.DeliveredThrough(); !m.IsZero() {
		t.Fatalf("DeliveredThrough before Subscribe = %v, want zero", m)
	}
	states, stop := subscribeStates(t, tr, func([]byte) {})
	upAt := waitState(t, states, true)
	first := waitMark(t, tr)
	if first.Before(upAt) {
		t.Errorf("first mark %v is before the subscription was reported up (%v)", first, upAt)
	}
	// It keeps within a few intervals of the present (a loaded machine
	// gets ten), and moves on.
	prev := first
	for range 5 {
		time.Sleep(3 * natsbus.DefaultMarkInterval)
		now := time.Now()
		m := tr.DeliveredThrough()
		if m.After(now) {
			t.Fatalf("DeliveredThrough %v is after time.Now %v", m, now)
		}
		if lag := now.Sub(m); lag > 10*natsbus.DefaultMarkInterval {
			t.Errorf("DeliveredThrough trails time.Now by %v with the subscription idle", lag)
		}
		if m.Before(prev) {
			t.Errorf("DeliveredThrough went back: %v, then %v", prev, m)
		}
		prev = m
	}
	if !prev.After(first) {
		t.Errorf("DeliveredThrough did not move on in %v: %v, then %v", 15*natsbus.DefaultMarkInterval, first, prev)
	}
	stop()
	if m := tr.DeliveredThrough(); !m.IsZero() {
		t.Fatalf("DeliveredThrough after Subscribe returned = %v, want zero", m)
	}
}

// TestDeliveredThroughWaitsForDelivery is the mark's promise: it never
// passes the time by which the server had taken a message that deliver has
// not yet returned for. Deliver holds the first message for a second, then
// takes a few milliseconds for each, while another connection publishes
// 150 messages (so that they wait both in Subscribe's hand-over channel
// and in the client's pending list), then, once the first is released,
// 150 more at a pace delivery catches up with; a
// watcher reads the mark throughout and compares it with the publish times
// (when each publisher's flush returned: the server had the message then)
// of the first message not yet delivered.
func TestDeliveredThroughWaitsForDelivery(t *testing.T) {
	t.Parallel()
	tr, pub := openMarked(t, &natsbus.Options{MarkInterval: 10 * time.Millisecond})

	const n = 300
	var (
		mu        sync.Mutex
		published [n]time.Time // when each message's flush returned
	)
	var delivered atomic.Int64 // messages deliver has returned for
	hold := make(chan struct{})
	states, stop := subscribeStates(t, tr, func(m []byte) {
		k := binary.BigEndian.Uint64(m)
		if int64(k) != delivered.Load() {
			t.Errorf("message %d delivered after %d others", k, delivered.Load())
		}
		if k == 0 {
			<-hold
		} else {
			time.Sleep(2 * time.Millisecond)
		}
		delivered.Add(1)
	})
	waitState(t, states, true)
	waitMark(t, tr)

	// The watcher: the mark first, then what was delivered, so that a
	// message counted as undelivered was undelivered when the mark was
	// read.
	watchDone := make(chan struct{})
	var marks, violations atomic.Int64
	var lastMark atomic.Int64
	go func() {
		defer close(watchDone)
		var prev time.Time
		for delivered.Load() < n {
			m := tr.DeliveredThrough()
			k := delivered.Load()
			if !m.IsZero() && m != prev {
				marks.Add(1)
				prev = m
				lastMark.Store(m.UnixNano())
			}
			if k < n {
				mu.Lock()
				p := published[k]
				mu.Unlock()
				if !p.IsZero() && !m.IsZero() && m.After(p) {
					if violations.Add(1) == 1 {
						t.Errorf("DeliveredThrough = %v, %v after message %d was published, which deliver had not returned for",
							m, m.Sub(p), k)
					}
				}
			}
			time.Sleep(500 * time.Microsecond)
		}
	}()

	released := make(chan struct{})
	time.AfterFunc(time.Second, func() { close(hold); close(released) })
	msg := make([]byte, 300)
	for k := range n {
		binary.BigEndian.PutUint64(msg, uint64(k))
		if err := pub.Publish(tr.Subject(), msg); err != nil {
			t.Fatal(err)
		}
		if err := pub.Flush(); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		published[k] = time.Now()
		mu.Unlock()
		if k == n/2-1 {
			<-released
		}
		if k >= n/2 {
			// The rest while the backlog drains and delivery
			// catches up.
			time.Sleep(5 * time.Millisecond)
		}
	}
	select {
	case <-watchDone:
	case <-time.After(30 * time.Second):
		t.Fatalf("only %d of %d messages delivered in 30s", delivered.Load(), n)
	}
	if d := tr.Dropped(); d != 0 {
		t.Fatalf("the client dropped %d messages: the test needs them all", d)
	}
	// The mark moved on while messages waited, and reaches past the last
	// one once all are delivered.
	if marks.Load() < 5 {
		t.Errorf("the mark moved only %d times during delivery", marks.Load())
	}
	mu.Lock()
	last := published[n-1]
	mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for !tr.DeliveredThrough().After(last) {
		if time.Now().After(deadline) {
			t.Fatalf("DeliveredThrough = %v, not past the last publish (%v) 5s after its delivery", tr.DeliveredThrough(), last)
		}
		time.Sleep(5 * time.Millisecond)
	}
	stop()
	t.Logf("%d marks seen during delivery", marks.Load())
}

// TestDeliveredThroughResetsOnOutage checks that the mark is zero while the
// connection is down, again as soon as the client has reconnected behind
// the back of a busy subscriber (which has yet to report the outage), and
// that no mark taken before the subscription was reported up again
// counts after it.
func TestDeliveredThroughResetsOnOutage(t *testing.T) {
	t.Parallel()
	url := embedded(t)
	px := nettest.NewProxy(t, url[len("nats://"):])
	tr := open(t, "nats://"+px.Addr, "mark-outage")
	pub, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()

	entered, release := make(chan struct{}, 1), make(chan struct{})
	var hold atomic.Bool
	states, _ := subscribeStates(t, tr, func([]byte) {
		if hold.Load() {
			entered <- struct{}{}
			<-release
		}
	})
	waitState(t, states, true)
	waitMark(t, tr)

	t.Run("down", func(t *testing.T) {
		px.Cut()
		waitState(t, states, false)
		if m := tr.DeliveredThrough(); !m.IsZero() {
			t.Errorf("DeliveredThrough = %v with the subscription reported down", m)
		}
		time.Sleep(5 * natsbus.DefaultMarkInterval)
		if m := tr.DeliveredThrough(); !m.IsZero() {
			t.Errorf("DeliveredThrough = %v with the subscription down", m)
		}
		px.Restore()
		upAt := waitState(t, states, true)
		if m := waitMark(t, tr); m.Before(upAt) {
			t.Errorf("DeliveredThrough = %v after the outage, before the subscription was reported up again (%v)", m, upAt)
		}
	})

	t.Run("quick-reconnect", func(t *testing.T) {
		// Hold the subscriber in deliver, then let the client lose its
		// connection and make it again at once.
		hold.Store(true)
		if err := pub.Publish(tr.Subject(), []byte("x")); err != nil {
			t.Fatal(err)
		}
		pub.Flush()
		select {
		case <-entered:
		case <-time.After(10 * time.Second):
			t.Fatal("no message delivered")
		}
		hold.Store(false)
		before := tr.Conn().Stats().Reconnects
		px.Cut()
		px.Restore()
		deadline := time.Now().Add(10 * time.Second)
		for tr.Conn().Stats().Reconnects == before || !tr.Conn().IsConnected() {
			if time.Now().After(deadline) {
				t.Fatal("client did not reconnect")
			}
			time.Sleep(5 * time.Millisecond)
		}
		// Let marks be taken on the new connection meanwhile.
		time.Sleep(5 * natsbus.DefaultMarkInterval)
		if m := tr.DeliveredThrough(); !m.IsZero() {
			t.Errorf("DeliveredThrough = %v after a reconnect the subscriber has not yet reported", m)
		}
		close(release)
		waitState(t, states, false)
		upAt := waitState(t, states, true)
		if m := waitMark(t, tr); m.Before(upAt) {
			t.Errorf("DeliveredThrough = %v after the reconnect, before the subscription was reported up again (%v)", m, upAt)
		}
	})
}

// TestDeliveredThroughPastSlowConsumerDrops checks the mark where the
// client drops messages for want of room (a slow consumer): it still never
// passes the publish time of a message delivered later, and it does not
// wait for the dropped ones, which never come. Each reading of the mark is
// kept with the time just after it; a message whose deliver began after
// such a reading must have been published no earlier than the mark read.
func TestDeliveredThroughPastSlowConsumerDrops(t *testing.T) {
	t.Parallel()
	tr, pub := openMarked(t, &natsbus.Options{MarkInterval: 10 * time.Millisecond, PendingMsgs: 20})

	const n = 300
	var (
		mu        sync.Mutex
		published [n]time.Time // when each message's flush returned
		began     [n]time.Time // when deliver began for each delivered one
	)
	hold := make(chan struct{})
	states, stop := subscribeStates(t, tr, func(m []byte) {
		k := binary.BigEndian.Uint64(m)
		mu.Lock()
		began[k] = time.Now()
		mu.Unlock()
		if k == 0 {
			<-hold
		} else {
			time.Sleep(time.Millisecond)
		}
	})
	waitState(t, states, true)
	waitMark(t, tr)

	type reading struct{ mark, after time.Time }
	var readings []reading
	watchStop, watchDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watchDone)
		for {
			select {
			case <-watchStop:
				return
			default:
			}
			m := tr.DeliveredThrough()
			readings = append(readings, reading{m, time.Now()})
			time.Sleep(500 * time.Microsecond)
		}
	}()

	released := make(chan struct{})
	time.AfterFunc(300*time.Millisecond, func() { close(hold); close(released) })
	msg := make([]byte, 300)
	for k := range n {
		binary.BigEndian.PutUint64(msg, uint64(k))
		if err := pub.Publish(tr.Subject(), msg); err != nil {
			t.Fatal(err)
		}
		if err := pub.Flush(); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		published[k] = time.Now()
		mu.Unlock()
		if k == 2*n/3-1 {
			<-released
		}
		if k >= 2*n/3 {
			time.Sleep(3 * time.Millisecond)
		}
	}
	mu.Lock()
	last := published[n-1]
	mu.Unlock()
	// The mark reaches past the last message although some before it
	// never come.
	deadline := time.Now().Add(10 * time.Second)
	for !tr.DeliveredThrough().After(last) {
		if time.Now().After(deadline) {
			t.Fatalf("DeliveredThrough = %v, not past the last publish (%v) 10s after it: it waits for dropped messages?", tr.DeliveredThrough(), last)
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(watchStop)
	<-watchDone
	stop()
	if tr.Dropped() == 0 {
		t.Fatal("the client dropped nothing: the test needs a slow consumer")
	}
	mu.Lock()
	defer mu.Unlock()
	delivered := 0
	for k := range n {
		if began[k].IsZero() {
			continue // dropped
		}
		delivered++
		for _, r := range readings {
			if r.after.Before(began[k]) && r.mark.After(published[k]) {
				t.Fatalf("DeliveredThrough = %v, %v after message %d was published, read before its deliver began",
					r.mark, r.mark.Sub(published[k]), k)
			}
		}
	}
	t.Logf("%d of %d delivered, %d dropped, %d readings", delivered, n, tr.Dropped(), len(readings))
}

// openMarked opens a transport with opts on the shared NATS server, and a
// plain connection to publish on its subject; both closed when the test
// ends.
func openMarked(t *testing.T, opts *natsbus.Options) (*natsbus.Transport, *nats.Conn) {
	t.Helper()
	url := sharedURL(t)
	tr, err := natsbus.Open(url, farmtest.FarmName(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	pub, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pub.Close)
	return tr, pub
}
