package farm_test

import (
	"context"
	"crypto/tls"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
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

// TestFlushWindowBatchesNewSessions: with a FlushWindow of 100ms, sessions
// that n1 issues one after another reach n2 in at most as many bus
// messages as windows of 100ms hold them (each message waits for the
// sessions of the next 100ms), and all of them arrive; with no window, and
// each session published before the next is issued (so that a slow Redis
// does not batch them), about each is its own message, as before: more
// than half as many messages as sessions. Without the window's code the
// windowed case too had a message per session. The window was 20ms until
// a CI run (the farm's tests three at a time) issued 12 sessions over
// 488ms, each more than 20ms after the last: 12 windows, 12 messages.
// Tallies and delivery marks are off: on NATS, n1's marks (one each
// 100ms) were counted among the messages (CI: 12 sessions over 151ms
// in 7 messages, one of them a mark).
func TestFlushWindowBatchesNewSessions(t *testing.T) {
	t.Parallel()
	const sessions = 12
	const window = 100 * time.Millisecond
	for _, tr := range windowTransports(t) {
		for _, w := range []time.Duration{0, window} {
			t.Run(tr.name+"/window="+w.String(), func(t *testing.T) {
				ms, _ := farmtest.Start(t, 2, &farmtest.Options{NewTransport: tr.open,
					Tweak: func(c *farm.Config) { c.TallyInterval = -1; c.PeerMarkInterval = -1; c.FlushWindow = w }})
				n1, n2 := ms[0], ms[1]
				at := issueTimes(n1.Cache)
				base := farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_messages_received_total")
				var ids []session.ID
				if w > 0 {
					ids, _ = farmtest.Issue(t, n1, sessions)
				}
				for i := 0; w == 0 && i < sessions; i++ {
					got, _ := farmtest.Issue(t, n1, 1)
					ids = append(ids, got...)
					// Each published before the next is issued: a
					// busy Redis would otherwise batch them.
					farmtest.Eventually(t, 5*time.Second, "n1 to publish the session", func() bool {
						return farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_published_total", "kind", "session") > uint64(i)
					})
				}
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
					// About one each; a loaded machine was seen to
					// let two go out together now and then, so the
					// control asks only for more than half. (It
					// used to ask for more than a 20ms window would
					// allow, which a slow machine that issued the
					// sessions over 20ms apart could not meet: CI,
					// 12 sessions over 301ms in 12 messages.)
					if msgs <= sessions/2 {
						t.Errorf("%d sessions issued over %v came in %d messages without a window, want more than %d", sessions, spread, msgs, sessions/2)
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

// TestFlushWindowBatchesResumptions: a TLS 1.3 resumption issues a child
// and queues its parent's grace cut; both wait in the flush window (100ms
// here; at 20ms a loaded CI run resumed each more than a window after the
// last: 8 resumptions in 8 messages), so resumptions one after another
// reach n2 in fewer messages than one each, and the cuts still land: n2 holds every child and has cut
// every parent to its grace. Before, the cut went out at once and took the
// child with it, one message per resumption.
func TestFlushWindowBatchesResumptions(t *testing.T) {
	t.Parallel()
	const sessions = 8
	const window = 100 * time.Millisecond
	ms, _ := farmtest.Start(t, 2, &farmtest.Options{NewTransport: redisTransport(redistest.URL(t)),
		Tweak: func(c *farm.Config) { c.TallyInterval = -1; c.FlushWindow = window }})
	n1, n2 := ms[0], ms[1]
	parents, clients := farmtest.Issue(t, n1, sessions)
	farmtest.Eventually(t, 5*time.Second, "n2 to hold the parents", func() bool {
		for _, id := range parents {
			if !inCache(n2, id) {
				return false
			}
		}
		return true
	})
	children := farmtest.HandshakeSessions(n1.Cache)
	base := farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_messages_received_total")
	for i, c := range clients {
		if !tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
			t.Fatalf("resumption %d did not resume", i)
		}
	}
	resumedBy := time.Now()
	kids := children()
	if len(kids) != sessions {
		t.Fatalf("%d resumptions issued %d sessions", sessions, len(kids))
	}
	farmtest.Eventually(t, 5*time.Second, "n2 to hold every child", func() bool {
		for _, id := range kids {
			if !inCache(n2, id) {
				return false
			}
		}
		return true
	})
	grace := n1.Cache.Config().ResumeGrace
	for i, id := range parents {
		if r, ok := lookup(n2.Cache, id); ok && r.Expires.After(resumedBy.Add(grace)) {
			t.Errorf("parent %d not cut on n2: it expires in %v, past its grace of %v", i, time.Until(r.Expires).Round(time.Second), grace)
		}
	}
	msgs := farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_messages_received_total") - base
	t.Logf("%d resumptions reached n2 in %d messages", sessions, msgs)
	if msgs >= sessions {
		t.Errorf("%d resumptions reached n2 in %d messages, want fewer than one each", sessions, msgs)
	}
}

// TestFlushWindowRetirementDoesNotWait: a retirement queued while new
// sessions wait in a flush window (2s here) is published at once, and the
// waiting session with it: both reach n2 well within the window (1s, a
// margin for a loaded machine). Before, the retirement waited for the
// window.
func TestFlushWindowRetirementDoesNotWait(t *testing.T) {
	t.Parallel()
	const window = 2 * time.Second
	for _, tr := range windowTransports(t) {
		t.Run(tr.name, func(t *testing.T) {
			ms, _ := farmtest.Start(t, 2, &farmtest.Options{NewTransport: tr.open,
				Tweak: func(c *farm.Config) { c.TallyInterval = -1; c.PeerMarkInterval = -1; farm.LongFlushWindow(c, window) }})
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
	t.Parallel()
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
	t.Parallel()
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
		{"grace", func(c *farm.Config) { c.FlushWindow = 60 * time.Millisecond },
			"longer than half of the cache's ResumeGrace (100ms)"},
		{"write-through lookup", func(c *farm.Config) {
			c.WriteThrough, c.LookupTimeout, c.FlushWindow = true, 50*time.Millisecond, 30*time.Millisecond
		}, "longer than half of LookupTimeout (50ms)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			name := farmtest.FarmName(t)
			tr := openRedis(t, url, name)
			cc := &session.Config{}
			if tt.name == "grace" {
				cc.ResumeGrace = 100 * time.Millisecond
			}
			cache, err := session.New(cc)
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
