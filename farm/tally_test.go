package farm_test

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// dropper is a Redis transport whose subscription silently drops the cut
// messages (retirements and grace cuts) of one sender, while it stays up:
// a bus losing messages without the subscription dropping (a NATS slow
// consumer, a broker dropping within a queue).
type dropper struct {
	*redisbus.Transport
	from    atomic.Uint64 // the sender instance whose cuts to drop; 0: none
	dropped atomic.Int64
}

func (d *dropper) Subscribe(ctx context.Context, deliver func([]byte), state func(bool, error)) error {
	return d.Transport.Subscribe(ctx, func(msg []byte) {
		if f := d.from.Load(); f != 0 && len(msg) >= farm.EnvSenderAt+8 &&
			msg[farm.EnvTypeAt] == farm.EnvTypeCut && binary.BigEndian.Uint64(msg[farm.EnvSenderAt:]) == f {
			d.dropped.Add(1)
			return
		}
		deliver(msg)
	}, state)
}

// dropperTransport opens, for each node, a Redis transport at url wrapped
// in dropper: its bus, and its store too if stored.
func dropperTransport(url string, stored bool) func(testing.TB, string) (transport.Bus, transport.Store) {
	return func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
		tr, err := redisbus.Open(url, farmName)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		d := &dropper{Transport: tr}
		if stored {
			return d, d
		}
		return d, nil
	}
}

const tallyInterval = 100 * time.Millisecond

func tallyCounter(m *farmtest.Member, event string) uint64 {
	return farmtest.Counter(m.Node.Metrics(), "tlsfarm_farm_tallies_total", "event", event)
}

func messagesLost(m *farmtest.Member) uint64 {
	return farmtest.Counter(m.Node.Metrics(), "tlsfarm_farm_messages_lost_total")
}

// A tallyPair is two nodes of a farm for the tests of tallies: n1 issued
// two sessions, one to be retired and a control, and n2 holds both.
type tallyPair struct {
	n1, n2             *farmtest.Member
	retired, control   session.ID
	retiredC, controlC *tlstest.FrozenCache // the clients that hold them
}

// tallyCases are the runs of a tally test: with a store or none, and with
// tallies or without (the controls, which show what the test asserts fails
// without them).
var tallyCases = []struct {
	name           string
	stored, detect bool
}{
	{"no-store", false, true},
	{"store", true, true},
	{"no-store-no-tallies", false, false},
	{"store-no-tallies", true, false},
}

// startTallyPair starts the pair on transports from nt, with tallies every
// tallyInterval (off unless detect), and waits until n2 holds both
// sessions and, if stored, the store does too.
func startTallyPair(t *testing.T, nt func(testing.TB, string) (transport.Bus, transport.Store), stored, detect bool) *tallyPair {
	t.Helper()
	o := &farmtest.Options{NewTransport: nt,
		Tweak: func(c *farm.Config) {
			c.TallyInterval = tallyInterval
			if !detect {
				c.TallyInterval = -1
			}
		}}
	ms, _ := farmtest.Start(t, 2, o)
	p := &tallyPair{n1: ms[0], n2: ms[1]}
	ids, cs := farmtest.Issue(t, p.n1, 2)
	p.retired, p.control, p.retiredC, p.controlC = ids[0], ids[1], cs[0], cs[1]
	farmtest.Eventually(t, 5*time.Second, "n2 holds both sessions", func() bool {
		_, a := lookup(p.n2.Cache, p.retired)
		_, b := lookup(p.n2.Cache, p.control)
		return a && b
	})
	if stored {
		waitStored(t, p.n1, p.retired)
		waitStored(t, p.n1, p.control)
	}
	return p
}

// waitChecked waits until n2 has checked n1's tallies past its baseline.
func (p *tallyPair) waitChecked(t *testing.T) {
	t.Helper()
	farmtest.Eventually(t, 5*time.Second, "n2 checks n1's tallies", func() bool {
		return tallyCounter(p.n2, "checked") >= 2
	})
}

// checkUndetected checks, with tallies off, that the loss went unnoticed:
// n2 still holds and resumes the retired session and counts nothing lost.
// It is what the tests assert with tallies that fails without them.
func (p *tallyPair) checkUndetected(t *testing.T) {
	t.Helper()
	time.Sleep(15 * tallyInterval)
	if _, ok := lookup(p.n2.Cache, p.retired); !ok {
		t.Fatal("n2 dropped the retired session without tallies: the test proves nothing")
	}
	if !tlstest.MustDial(t, p.n2.Server.Addr, farmtest.Client(tls.VersionTLS13, p.retiredC)).DidResume {
		t.Fatal("the retired session did not resume on n2 without tallies: the test proves nothing")
	}
	if got := messagesLost(p.n2); got != 0 {
		t.Fatalf("n2 counted %d lost messages without tallies", got)
	}
}

// checkSettled checks that n2 found the loss of n1's messages from its
// tallies (and n1 none) and settled it as a bus gap: with a store, a
// reconcile that keeps the control session; without, the cache dropped.
// Either way the retired session no longer resumes on n2. since is when
// n2 could have caught up.
func (p *tallyPair) checkSettled(t *testing.T, stored bool, since time.Time) {
	t.Helper()
	p.checkGapSettled(t, stored, since, true)
}

// checkGapSettled checks that n2 settled the loss of n1's messages as a bus
// gap, as checkSettled, and, if tallied, that it found the loss from its
// tallies. It returns how long after since n2 dropped the retired session.
func (p *tallyPair) checkGapSettled(t *testing.T, stored bool, since time.Time, tallied bool) time.Duration {
	t.Helper()
	n1, n2 := p.n1, p.n2
	farmtest.Eventually(t, 10*time.Second, "n2 no longer holds the retired session", func() bool {
		_, ok := lookup(n2.Cache, p.retired)
		return !ok
	})
	took := time.Since(since)
	t.Logf("n2 settled the loss %v after it could", took.Round(time.Millisecond))
	if tallied {
		if got := messagesLost(n2); got == 0 {
			t.Fatal("n2 counted no lost message")
		} else {
			t.Logf("n2 found %d of n1's messages missing", got)
		}
		if tallyCounter(n2, "loss") == 0 {
			t.Fatal("n2 counted no tally that found a loss")
		}
	}
	if got := messagesLost(n1); got != 0 {
		t.Fatalf("n1 counted %d lost messages, none lost", got)
	}
	if stored {
		farmtest.Eventually(t, 5*time.Second, "n2 reconciled", func() bool {
			return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_reconciles_total", "result", "done") >= 1
		})
		if dropped := farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_reconciles_total", "result", "dropped"); dropped != 0 {
			t.Fatalf("n2 dropped its cache %d times, with a store", dropped)
		}
		if _, ok := lookup(n2.Cache, p.control); !ok {
			t.Fatal("n2 lost the control session: it reconciled nothing, or dropped its cache")
		}
		if !tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, p.controlC)).DidResume {
			t.Fatal("the control session did not resume on n2")
		}
	} else {
		// Counted once the whole cache is dropped, after the retired
		// session went.
		farmtest.Eventually(t, 5*time.Second, "n2 counted its cache dropped", func() bool {
			return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_reconciles_total", "result", "dropped") > 0
		})
		if _, ok := lookup(n2.Cache, p.control); ok {
			t.Fatal("n2 kept the control session, with no store to vouch for it")
		}
	}
	if tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, p.retiredC)).DidResume {
		t.Fatal("the retired session resumed on n2")
	}
	return took
}

// TestTallyFindsLostRetirement: n2's subscription silently drops n1's
// cut messages while it stays up, and n1 retires a session n2 holds.
// With tallies, n2 finds the loss within a few tally intervals, counts
// it, and settles it as a bus gap: with no store (and no
// KeepAfterBusGap) it drops its cache; with a Redis store it checks its
// cache against the store, retiring the session and keeping a control
// session the farm did not touch. Without tallies (the control runs), n2
// goes on holding the retired session: what the test asserts fails
// without the detection.
func TestTallyFindsLostRetirement(t *testing.T) {
	t.Parallel()
	for _, tc := range tallyCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := startTallyPair(t, dropperTransport(redistest.URL(t), tc.stored), tc.stored, tc.detect)
			n1, n2 := p.n1, p.n2
			d2 := n2.Bus.(*dropper)
			if tc.detect {
				// Past n2's baseline of n1's tallies, and the
				// slots after it.
				p.waitChecked(t)
			}

			d2.from.Store(n1.Node.Instance())
			if !n1.Cache.Retire(p.retired, session.OriginAPI) {
				t.Fatal("n1 did not hold the session to retire")
			}
			farmtest.Eventually(t, 5*time.Second, "n2 missed n1's retirement", func() bool { return d2.dropped.Load() > 0 })
			lostAt := time.Now()

			if !tc.detect {
				p.checkUndetected(t)
				return
			}
			p.checkSettled(t, tc.stored, lostAt)
		})
	}
}

// noise has m publish batches of 1 to 8 empty session messages from
// workers goroutines at once until stop is closed: Redis's pool spreads
// them over several connections, so they may reach peers in another order
// than they were counted in. The workers also stop, and are waited for,
// when the test ends before stop is closed (a failed wait): one still
// publishing once the test's cleanup closed its node reported the error
// on a finished test, which panics the whole binary.
func noise(t *testing.T, m *farmtest.Member, workers int, stop <-chan struct{}, wg *sync.WaitGroup) {
	ended := make(chan struct{})
	var own sync.WaitGroup
	t.Cleanup(func() { close(ended); own.Wait() }) // before the node's Close
	for w := range workers {
		wg.Add(1)
		own.Add(1)
		go func() {
			defer wg.Done()
			defer own.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-ended:
					return
				default:
				}
				if err := m.Node.PublishNoise(context.Background(), 1+(i+w)%8); err != nil {
					t.Errorf("%s: publish: %v", m.Name, err)
					return
				}
			}
		}()
	}
}

// TestTallyFarmNoFalseLoss: three nodes publish as fast as they can from
// several goroutines each, over Redis, with nothing lost: no node finds a
// loss, while each checks many of the others' slots.
func TestTallyFarmNoFalseLoss(t *testing.T) {
	t.Parallel()
	ms, _ := farmtest.Start(t, 3, &farmtest.Options{NewTransport: busOnly(redistest.URL(t)),
		Tweak: func(c *farm.Config) { c.TallyInterval = tallyInterval }})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, m := range ms {
		noise(t, m, 4, stop, &wg)
	}
	// At least 3 s, and until every node has checked many slots: on a
	// loaded machine a node may take longer to hear enough tallies (a
	// CI run: 12 checked in 3 s).
	time.Sleep(3 * time.Second)
	farmtest.Eventually(t, 30*time.Second, "every node checked many slots", func() bool {
		for _, m := range ms {
			if tallyCounter(m, "checked") < 20 {
				return false
			}
		}
		return true
	})
	close(stop)
	wg.Wait()
	time.Sleep(5 * tallyInterval) // the last slots reported and checked
	for _, m := range ms {
		if got := messagesLost(m); got != 0 {
			t.Errorf("%s found %d messages lost, none were", m.Name, got)
		}
		if got := tallyCounter(m, "checked"); got < 20 {
			t.Errorf("%s checked %d slots of its peers' tallies, want many", m.Name, got)
		}
		t.Logf("%s: %d messages received, %d slots checked, %d tallies received", m.Name,
			farmtest.Counter(m.Node.Metrics(), "tlsfarm_farm_messages_received_total"), tallyCounter(m, "checked"), tallyCounter(m, "received"))
	}
}

// lateTally is a Redis transport whose every tally reaches the bus hold
// after it was sealed, while the node's other messages go at once: a
// tally publish that waits for a core, or for a pool connection, on a
// loaded machine. While a tally is held, ahead counts the messages
// published that were sealed two slots (of width) or more after the
// tally's slot began: those a receiver hears before the tally, sealed in
// slots it would once have checked had the tally been its baseline.
type lateTally struct {
	*redisbus.Transport
	hold  time.Duration
	width time.Duration
	limit atomic.Int64 // while a tally is held: the start (Unix µs) of its slot+2
	ahead atomic.Int64
}

func (l *lateTally) Publish(ctx context.Context, msgs ...[]byte) error {
	if len(msgs) == 1 && len(msgs[0]) > farm.EnvSenderAt && msgs[0][farm.EnvTypeAt] == farm.EnvTypeTally {
		w := l.width.Microseconds()
		sealed := int64(binary.BigEndian.Uint64(msgs[0][farm.EnvSealedAt:]))
		l.limit.Store((sealed/w + 2) * w)
		t := time.NewTimer(l.hold)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
		}
		l.limit.Store(0)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	} else if limit := l.limit.Load(); limit != 0 {
		for _, m := range msgs {
			if len(m) > farm.EnvSenderAt && int64(binary.BigEndian.Uint64(m[farm.EnvSealedAt:])) >= limit {
				l.ahead.Add(1)
			}
		}
	}
	return l.Transport.Publish(ctx, msgs...)
}

// TestTallyLateBaselineNoFalseLoss: n1's tallies each reach the bus three
// tally intervals after they were sealed, while its other messages (a
// stream of them, from two goroutines) go ahead of them; n2 takes the
// first tally it hears from n1 for its baseline, late as it is. n2 must
// find nothing lost. It once did (TestTallyFarmNoFalseLoss failed so on a
// loaded machine, where a tally's publish took 200-400 ms): n2 checked the
// slots from the baseline's slot+2 on, though it had heard messages of
// those slots before the baseline, uncounted, and found them missing.
func TestTallyLateBaselineNoFalseLoss(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	var l1 *lateTally
	o := &farmtest.Options{
		NewTransport: func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
			tr, err := redisbus.Open(url, farmName)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { tr.Close() })
			if l1 != nil {
				return tr, nil
			}
			l1 = &lateTally{Transport: tr, hold: 3 * tallyInterval, width: tallyInterval}
			return l1, nil
		},
		Tweak: func(c *farm.Config) {
			c.TallyInterval = tallyInterval
			// A tally's publish may take OpTimeout/4: the hold and
			// a publish on a loaded machine.
			c.OpTimeout = 8 * time.Second
		}}
	ms, _ := farmtest.Start(t, 2, o)
	n1, n2 := ms[0], ms[1]
	if n1.Bus != l1 {
		t.Fatal("n1 is not on the transport that holds its tallies")
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	noise(t, n1, 2, stop, &wg)
	farmtest.Eventually(t, 30*time.Second, "n2 checked many of n1's slots", func() bool {
		return tallyCounter(n2, "checked") >= 20
	})
	close(stop)
	wg.Wait()
	t.Logf("n2: %d slots checked, %d tallies received; n1: %d messages sealed two slots past a held tally's, published before it",
		tallyCounter(n2, "checked"), tallyCounter(n2, "received"), l1.ahead.Load())
	if l1.ahead.Load() == 0 {
		t.Fatal("no message went ahead of a held tally: the test proves nothing")
	}
	if got := messagesLost(n2); got != 0 {
		t.Fatalf("n2 found %d of n1's messages lost, none were", got)
	}
}

// waitTallySent waits until m's tallier has sent a tally since its last
// failed one, as far as its counts show. Close sends its last tally only
// if no publish failed within OpTimeout before it (see Node.Close), and
// the tallier sends none within OpTimeout of a failed publish: the tally
// it sent is past that. On a loaded machine a tally's publish can outlast
// its bound (OpTimeout/4: 500 ms here) and fail; Close then rightly sent
// no last tally, and TestTallyRestartNotLoss failed so ("n1's Close sent
// no last tally (1 failed so far)"). The wait takes OpTimeout past the
// last failure, and a tick.
func waitTallySent(t *testing.T, m *farmtest.Member) {
	t.Helper()
	failed, sent := tallyCounter(m, "failed"), tallyCounter(m, "sent")
	farmtest.Eventually(t, 10*time.Second, m.Name+" sends a tally past its last failed one", func() bool {
		if f := tallyCounter(m, "failed"); f != failed {
			failed, sent = f, tallyCounter(m, "sent")
			return false
		}
		return tallyCounter(m, "sent") > sent
	})
}

// TestTallyRestartNotLoss: a node that restarts is a new instance: its
// peers take its first tally as a new baseline and find nothing lost,
// and its last tally (at Close) and its old counts trouble nothing.
func TestTallyRestartNotLoss(t *testing.T) {
	t.Parallel()
	o := &farmtest.Options{NewTransport: busOnly(redistest.URL(t)),
		Tweak: func(c *farm.Config) { c.TallyInterval = tallyInterval }}
	ms, name := farmtest.Start(t, 2, o)
	n1, n2 := ms[0], ms[1]
	run := func(m *farmtest.Member) {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		noise(t, m, 3, stop, &wg)
		time.Sleep(time.Second)
		close(stop)
		wg.Wait()
	}
	run(n1)
	waitTallySent(t, n1)
	received, sent := tallyCounter(n2, "received"), tallyCounter(n1, "sent")
	n1.Node.Close()
	if got := tallyCounter(n1, "sent"); got <= sent {
		t.Fatalf("n1's Close sent no last tally (%d failed so far)", tallyCounter(n1, "failed"))
	}
	// n2 may still be working through n1's noise (a second of publishes
	// from three goroutines, which a loaded machine receives slower than
	// it sends): the last tally comes after it, in order.
	farmtest.Eventually(t, 10*time.Second, "n2 got n1's last tally", func() bool {
		return tallyCounter(n2, "received") > received
	})
	checked := tallyCounter(n2, "checked")
	n1b := farmtest.Join(t, "n1", name, *o)
	farmtest.WaitConnected(t, n1b)
	run(n1b)
	farmtest.Eventually(t, 5*time.Second, "n2 checks the restarted node's tallies", func() bool {
		return tallyCounter(n2, "checked") >= checked+5
	})
	t.Logf("n1b: %d tallies sent, %d failed; n2: %d received, %d slots checked", tallyCounter(n1b, "sent"), tallyCounter(n1b, "failed"),
		tallyCounter(n2, "received"), tallyCounter(n2, "checked"))
	if got := tallyCounter(n2, "checked"); got < checked+5 {
		t.Fatalf("n2 checked %d slots of the restarted node's tallies, want several", got-checked)
	}
	if got := messagesLost(n2); got != 0 {
		t.Fatalf("n2 found %d messages lost across n1's restart", got)
	}
}

// TestTallyCloseAfterCancelledTick: a tally tick that Close cancels (the
// tallier woke for it, or was publishing it, when Close stopped the node's
// goroutines) is no transport failure: Close still sends the last tally.
// The node's own cancellation once counted as a publish that failed,
// and Close, which sends no last tally through an outage, sent none
// (TestTallyRestartNotLoss failed so on a loaded machine, where the
// tallier's goroutine can wait for a core past the tick). The tick is held
// here until Close has cancelled it.
func TestTallyCloseAfterCancelledTick(t *testing.T) {
	t.Parallel()
	o := &farmtest.Options{NewTransport: busOnly(redistest.URL(t)),
		Tweak: func(c *farm.Config) { c.TallyInterval = tallyInterval }}
	ms, _ := farmtest.Start(t, 2, o)
	n1, n2 := ms[0], ms[1]
	farmtest.Eventually(t, 10*time.Second, "n2 has n1's tallies", func() bool {
		return tallyCounter(n2, "received") >= 2
	})
	waitTallySent(t, n1)
	held := make(chan struct{})
	var once sync.Once
	n1.Node.HoldTallyTick(func(ctx context.Context) {
		once.Do(func() {
			close(held)
			<-ctx.Done() // Close cancelled the tick
		})
	})
	<-held
	received, sent := tallyCounter(n2, "received"), tallyCounter(n1, "sent")
	n1.Node.Close()
	if got := tallyCounter(n1, "sent"); got <= sent {
		t.Fatalf("n1's Close sent no last tally after a cancelled tick (%d failed so far)", tallyCounter(n1, "failed"))
	}
	farmtest.Eventually(t, 10*time.Second, "n2 got n1's last tally", func() bool {
		return tallyCounter(n2, "received") > received
	})
}
