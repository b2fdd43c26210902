package farm_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/session"
)

// windowTransports are the transports the flush window is tested on: one
// Redis for bus and store (one publish queue), and a NATS bus with a Redis
// store (the store's own queue beside the bus's).
func windowTransports(t *testing.T) []struct {
	name string
	open func(testing.TB, string) (transport.Bus, transport.Store)
} {
	url := redistest.URL(t)
	natsURL := farmtest.ServerURL(t, "NATS", "TLSFARM_NATS_URL", "nats://127.0.0.1:4222")
	return []struct {
		name string
		open func(testing.TB, string) (transport.Bus, transport.Store)
	}{
		{"redis", redisTransport(url)},
		{"nats-bus", natsBusRedisStore(natsURL, url)},
	}
}

// issueTimes records when c issues each session in a handshake.
func issueTimes(c *session.Cache) func() []time.Time {
	var mu sync.Mutex
	var at []time.Time
	c.AddHook(session.EventNew, func(ev session.Event) {
		if ev.Origin == session.OriginHandshake {
			mu.Lock()
			at = append(at, time.Now())
			mu.Unlock()
		}
	})
	return func() []time.Time {
		mu.Lock()
		defer mu.Unlock()
		return append([]time.Time(nil), at...)
	}
}

// windows returns how many flush windows of width w sessions issued at
// the times at (in order) fill at most: a window opens at the first
// session not in one and takes every session issued within w of it.
func windows(at []time.Time, w time.Duration) int {
	n := 0
	var start time.Time
	for i, t := range at {
		if i == 0 || t.Sub(start) > w {
			n++
			start = t
		}
	}
	return n
}

// TestFlushWindowBatchesNewSessions: with a FlushWindow of 20ms, sessions
// that n1 issues one after another reach n2 in as few bus messages as
// windows of 20ms hold them (each message waits for the sessions of the
// next 20ms), and all of them arrive; with no window each session is its
// own message, as before. Without the window's code every session was its
// own message in both cases.
func TestFlushWindowBatchesNewSessions(t *testing.T) {
	const sessions = 12
	const window = 20 * time.Millisecond
	for _, tr := range windowTransports(t) {
		for _, w := range []time.Duration{0, window} {
			t.Run(tr.name+"/window="+w.String(), func(t *testing.T) {
				ms, _ := farmtest.Start(t, 2, &farmtest.Options{NewTransport: tr.open,
					Tweak: func(c *farm.Config) { c.TallyInterval = -1; c.FlushWindow = w }})
				n1, n2 := ms[0], ms[1]
				at := issueTimes(n1.Cache)
				base := farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_messages_received_total")
				ids, _ := farmtest.Issue(t, n1, sessions)
				farmtest.Eventually(t, 5*time.Second, "n2 to hold every session n1 issued", func() bool {
					for _, id := range ids {
						if !inCache(n2, id) {
							return false
						}
					}
					return true
				})
				msgs := farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_messages_received_total") - base
				times := at()
				spread := times[len(times)-1].Sub(times[0])
				if w == 0 {
					if msgs != sessions {
						t.Errorf("%d sessions issued over %v came in %d messages, want one each", sessions, spread, msgs)
					}
					return
				}
				// One more than the windows, for a session issued
				// just as one closed.
				most := uint64(windows(times, w)) + 1
				t.Logf("%d sessions issued over %v came in %d messages (windows: %d)", sessions, spread, msgs, most-1)
				if msgs > most || msgs >= sessions {
					t.Errorf("%d sessions issued over %v came in %d messages, want at most %d (and fewer than one each)", sessions, spread, msgs, min(most, sessions-1))
				}
			})
		}
	}
}

// TestFlushWindowRetirementDoesNotWait: a retirement queued while new
// sessions wait in a flush window (2s here) is published at once, and the
// waiting session with it: both reach n2 well within the window (1s, a
// margin for a loaded machine). Before, the retirement waited for the
// window.
func TestFlushWindowRetirementDoesNotWait(t *testing.T) {
	const window = 2 * time.Second
	for _, tr := range windowTransports(t) {
		t.Run(tr.name, func(t *testing.T) {
			ms, _ := farmtest.Start(t, 2, &farmtest.Options{NewTransport: tr.open,
				Tweak: func(c *farm.Config) { c.TallyInterval = -1; farm.LongFlushWindow(c, window) }})
			n1, n2 := ms[0], ms[1]
			ids, _ := farmtest.Issue(t, n1, 1)
			retired := ids[0]
			farmtest.Eventually(t, 3*window, "n2 to hold the first session", func() bool { return inCache(n2, retired) })
			ids, _ = farmtest.Issue(t, n1, 1) // opens a window
			waiting := ids[0]
			start := time.Now()
			if !n1.Cache.Retire(retired, session.OriginAPI) {
				t.Fatal("n1 did not hold the session to retire")
			}
			farmtest.Eventually(t, 3*window, "n2 to drop the retired session", func() bool { return !inCache(n2, retired) })
			took := time.Since(start)
			if took > window/2 {
				t.Errorf("the retirement reached n2 after %v, within a window of %v: it waited", took, window)
			}
			if !inCache(n2, waiting) {
				t.Errorf("the session waiting in the window did not reach n2 with the retirement (after %v)", took)
			}
		})
	}
}

// TestFlushWindowCloseDoesNotWait: Close while new sessions wait in a flush
// window (5s here) writes and publishes them at once: Close returns well
// within the window (1.5s), n2 holds the sessions and the store has their
// records. Before, Close waited for the window and, past OpTimeout,
// dropped what waited.
func TestFlushWindowCloseDoesNotWait(t *testing.T) {
	const window = 5 * time.Second
	for _, tr := range windowTransports(t) {
		t.Run(tr.name, func(t *testing.T) {
			ms, _ := farmtest.Start(t, 2, &farmtest.Options{NewTransport: tr.open,
				Tweak: func(c *farm.Config) { farm.LongFlushWindow(c, window) }})
			n1, n2 := ms[0], ms[1]
			ids, _ := farmtest.Issue(t, n1, 3)
			start := time.Now()
			n1.Node.Close()
			if took := time.Since(start); took > 1500*time.Millisecond {
				t.Errorf("Close took %v with sessions in a window of %v", took, window)
			}
			farmtest.Eventually(t, time.Second, "n2 to hold the sessions", func() bool {
				for _, id := range ids {
					if !inCache(n2, id) {
						return false
					}
				}
				return true
			})
			for i, id := range ids {
				if !stored(n2, id) {
					t.Errorf("session %d is not in the store after Close", i)
				}
			}
		})
	}
}

// TestFlushWindowBounds: Join refuses a negative FlushWindow, one over
// 100ms, and with write-through one over half of WriteThroughTimeout or
// LookupTimeout, each with an error that says why; it takes 0 and 100ms.
func TestFlushWindowBounds(t *testing.T) {
	url := redistest.URL(t)
	for _, tt := range []struct {
		name string
		set  func(*farm.Config)
		want string // "" for none
	}{
		{"zero", func(c *farm.Config) {}, ""},
		{"100ms", func(c *farm.Config) { c.FlushWindow = 100 * time.Millisecond }, ""},
		{"negative", func(c *farm.Config) { c.FlushWindow = -time.Millisecond }, "FlushWindow -1ms is negative"},
		{"over 100ms", func(c *farm.Config) { c.FlushWindow = 101 * time.Millisecond }, "longer than 100ms: new sessions would reach peers and the store that much later"},
		{"write-through", func(c *farm.Config) {
			c.WriteThrough, c.WriteThroughTimeout, c.FlushWindow = true, 100*time.Millisecond, 60*time.Millisecond
		}, "longer than half of WriteThroughTimeout (100ms)"},
		{"write-through lookup", func(c *farm.Config) {
			c.WriteThrough, c.LookupTimeout, c.FlushWindow = true, 50*time.Millisecond, 30*time.Millisecond
		}, "longer than half of LookupTimeout (50ms)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			name := farmtest.FarmName(t)
			tr := openRedis(t, url, name)
			cache, err := session.New(&session.Config{})
			if err != nil {
				t.Fatal(err)
			}
			defer cache.Close()
			cfg := farm.Config{Farm: name, Secrets: []farm.Secret{farm.NewSecret(1)}, Cache: cache, Bus: tr, Store: tr,
				Logger: slog.New(slog.DiscardHandler)}
			tt.set(&cfg)
			n, err := farm.Join(context.Background(), cfg)
			if err == nil {
				n.Close()
			}
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Join: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Join = %v, want an error saying %q", err, tt.want)
			}
		})
	}
}
