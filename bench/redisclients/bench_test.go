package redisclients

import (
	"context"
	"flag"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"
)

// The sizes of the farm's traffic: a session's record (a sealed session of
// a few hundred bytes) and its time to live, the batch message's bytes per
// session, and the publisher's per-batch timeout (farm.Config.OpTimeout).
const (
	valueSize  = 300
	recordTTL  = 10 * time.Second
	opTimeout  = 2 * time.Second
	markEvery  = 100 * time.Millisecond // redisbus.MarkInterval
	markPrefix = "mark:"
)

// newGoRedis returns a go-redis client as farm/redisbus makes one from a
// redis:// URL: RESP3, ContextTimeoutEnabled, one dial retry.
func newGoRedis(tb testing.TB, addr string) *redis.Client {
	tb.Helper()
	opt, err := redis.ParseURL("redis://" + addr + "/0")
	if err != nil {
		tb.Fatal(err)
	}
	opt.ContextTimeoutEnabled = true
	opt.DialerRetries = 1
	c := redis.NewClient(opt)
	tb.Cleanup(func() { c.Close() })
	if err := c.Ping(context.Background()).Err(); err != nil {
		tb.Fatal(err)
	}
	return c
}

// newRueidis returns a rueidis client for one server, its client-side
// caching off (the farm keeps its own cache; with caching on, every
// connection runs its background reader and writer all the time).
func newRueidis(tb testing.TB, addr string) rueidis.Client {
	tb.Helper()
	return newRueidisWith(tb, addr, false)
}

// newRueidisWith is newRueidis, with every connection in pipelining mode
// from the start if always is set (ClientOption.AlwaysPipelining): the
// mode a connection enters for good the first time two callers overlap
// on it, or a Receive uses it.
func newRueidisWith(tb testing.TB, addr string, always bool) rueidis.Client {
	tb.Helper()
	c, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress:       []string{addr},
		DisableCache:      true,
		ForceSingleClient: true,
		AlwaysPipelining:  always,
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(c.Close)
	return c
}

// clients returns names in the order of this run (see -reverse).
func clients(names ...string) []string {
	if *reverse {
		slices.Reverse(names)
	}
	return names
}

// A batcher sends one batch: the SETs of keys, each to val with PX
// recordTTL, and one PUBLISH of msg, in one pipeline.
type batcher func(ctx context.Context, keys []string, val, msg []byte) error

func goRedisBatcher(c *redis.Client, channel string) batcher {
	return func(ctx context.Context, keys []string, val, msg []byte) error {
		_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, k := range keys {
				p.Set(ctx, k, val, recordTTL)
			}
			p.Publish(ctx, channel, msg)
			return nil
		})
		return err
	}
}

func rueidisBatcher(c rueidis.Client, channel string) batcher {
	var cmds rueidis.Commands
	return func(ctx context.Context, keys []string, val, msg []byte) error {
		cmds = cmds[:0]
		for _, k := range keys {
			cmds = append(cmds, c.B().Set().Key(k).Value(rueidis.BinaryString(val)).Px(recordTTL).Build())
		}
		cmds = append(cmds, c.B().Publish().Channel(channel).Message(rueidis.BinaryString(msg)).Build())
		for _, r := range c.DoMulti(ctx, cmds...) {
			if err := r.Error(); err != nil {
				return err
			}
		}
		return nil
	}
}

// BenchmarkPublishBatch is the publisher's batch: k SETs with PX and one
// PUBLISH of the k sessions' bytes, one pipeline, one goroutine, one batch
// after the other, each under its own timeout as the farm's publisher
// sends it. rueidis-shared is a rueidis client that also holds a
// subscription (Receive), as one client serving a node's publisher and
// subscriber would; rueidis-bg has all its connections in pipelining
// mode, as a client shared with concurrent callers (the handshakes'
// lookups) ends up.
//
// rueidis sends a call on the caller's goroutine (write, then read) only
// while its connection has never had two callers at once nor a Receive,
// and the call's context has a deadline or no Done channel; otherwise a
// writer and a reader goroutine serve it, one wake-up each.
func BenchmarkPublishBatch(b *testing.B) {
	addr := server(b)
	for _, k := range []int{1, 4, 16} {
		b.Run(fmt.Sprintf("k=%d", k), func(b *testing.B) {
			for _, name := range clients("goredis", "rueidis", "rueidis-shared", "rueidis-bg") {
				b.Run("client="+name, func(b *testing.B) {
					channel := "bus:" + b.Name()
					var send batcher
					switch name {
					case "goredis":
						send = goRedisBatcher(newGoRedis(b, addr), channel)
					case "rueidis":
						send = rueidisBatcher(newRueidis(b, addr), channel)
					case "rueidis-bg":
						send = rueidisBatcher(newRueidisWith(b, addr, true), channel)
					case "rueidis-shared":
						c := newRueidis(b, addr)
						ctx, cancel := context.WithCancel(context.Background())
						done := make(chan struct{})
						go func() {
							defer close(done)
							c.Receive(ctx, c.B().Subscribe().Channel("other:"+b.Name()).Build(), func(rueidis.PubSubMessage) {})
						}()
						b.Cleanup(func() { cancel(); <-done })
						waitSubscribers(b, addr, "other:"+b.Name(), 1)
						send = rueidisBatcher(c, channel)
					}
					batch(b, addr, k, send)
				})
			}
		})
	}
}

// batch runs b.N batches of k sessions with send and reports CPU per batch.
func batch(b *testing.B, addr string, k int, send batcher) {
	val := []byte(strings.Repeat("v", valueSize))
	msg := []byte(strings.Repeat("m", k*valueSize))
	keys := make([]string, k)
	prefix := "rec:" + b.Name() + ":" + strconv.Itoa(b.N) + ":"
	ctx := context.Background()
	run := func(from, to int) {
		for i := from; i < to; i++ {
			for j := range keys {
				keys[j] = prefix + strconv.Itoa(i*k+j)
			}
			bctx, cancel := context.WithTimeout(ctx, opTimeout)
			err := send(bctx, keys, val, msg)
			cancel()
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	run(-warmup, 0) // connections made, buffers grown
	b.ReportAllocs()
	m := startMeter(b, addr)
	run(0, b.N)
	m.stop(b, b.N, "batch")
}

// warmup is how many batches or operations a benchmark runs before it
// measures, so that connections are made and pools are filled.
const warmup = 32

// waitSubscribers waits until channel has n subscribers.
func waitSubscribers(tb testing.TB, addr, channel string, n int) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, err := command(addr, "PUBSUB", "NUMSUB", channel)
		if err != nil {
			tb.Fatal(err)
		}
		if strings.HasSuffix(r, "\n"+strconv.Itoa(n)) {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("channel %s: %q, want %d subscribers", channel, r, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A subscriber receives on channel until ctx ends, calling got for each
// message, and sends a marking PING on its subscription every markEvery,
// as farm/redisbus does; it returns once it is subscribed and a func that
// waits for it to end.
type subscriber func(ctx context.Context, channel string, got func([]byte)) (wait func())

// goRedisSubscriber receives as farm/redisbus's Subscribe loop does:
// ReceiveTimeout with a health interval, marking pings on the PubSub.
func goRedisSubscriber(tb testing.TB, addr string) subscriber {
	c := newGoRedis(tb, addr)
	return func(ctx context.Context, channel string, got func([]byte)) func() {
		ps := c.Subscribe(ctx, channel)
		var wg sync.WaitGroup
		wg.Go(func() {
			defer ps.Close()
			marks := time.NewTicker(markEvery)
			defer marks.Stop()
			var mg sync.WaitGroup
			mctx, stop := context.WithCancel(ctx)
			mg.Go(func() {
				for {
					select {
					case <-mctx.Done():
						return
					case <-marks.C:
					}
					ps.Ping(mctx, markPrefix+strconv.FormatInt(time.Now().UnixNano(), 10))
				}
			})
			defer mg.Wait()
			defer stop()
			context.AfterFunc(ctx, func() { ps.Close() })
			var marked atomic.Int64 // as redisbus's delivered mark
			for {
				m, err := ps.ReceiveTimeout(ctx, 5*time.Second)
				if ctx.Err() != nil {
					return
				}
				if err != nil {
					continue
				}
				switch m := m.(type) {
				case *redis.Message:
					got([]byte(m.Payload))
				case *redis.Pong:
					if d, ok := strings.CutPrefix(m.Payload, markPrefix); ok {
						if t, err := strconv.ParseInt(d, 10, 64); err == nil {
							marked.Store(t)
						}
					}
				}
			}
		})
		return wg.Wait
	}
}

// rueidisSubscriber receives with Client.Receive (the reader goroutine
// hands each message to Receive's goroutine over a channel), marking
// pings with Client.Do (PING, having no key, goes on the same connection
// as the SUBSCRIBE).
func rueidisSubscriber(tb testing.TB, addr string) subscriber {
	c := newRueidis(tb, addr)
	return func(ctx context.Context, channel string, got func([]byte)) func() {
		var wg sync.WaitGroup
		wg.Go(func() {
			c.Receive(ctx, c.B().Subscribe().Channel(channel).Build(), func(m rueidis.PubSubMessage) {
				got([]byte(m.Message))
			})
		})
		wg.Go(func() {
			markLoop(ctx, func(ctx context.Context, p string) { c.Do(ctx, c.B().Ping().Message(p).Build()) })
		})
		return wg.Wait
	}
}

// rueidisHooksSubscriber receives on a dedicated connection with
// PubSubHooks: the reader goroutine calls OnMessage itself.
func rueidisHooksSubscriber(tb testing.TB, addr string) subscriber {
	c := newRueidis(tb, addr)
	return func(ctx context.Context, channel string, got func([]byte)) func() {
		dc, release := c.Dedicate()
		closed := dc.SetPubSubHooks(rueidis.PubSubHooks{OnMessage: func(m rueidis.PubSubMessage) {
			got([]byte(m.Message))
		}})
		if err := dc.Do(ctx, dc.B().Subscribe().Channel(channel).Build()).Error(); err != nil {
			tb.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Go(func() {
			markLoop(ctx, func(ctx context.Context, p string) { dc.Do(ctx, dc.B().Ping().Message(p).Build()) })
		})
		wg.Go(func() {
			select {
			case <-ctx.Done():
			case <-closed:
			}
			release()
		})
		return wg.Wait
	}
}

// markLoop calls ping with a marking payload every markEvery until ctx ends.
func markLoop(ctx context.Context, ping func(context.Context, string)) {
	t := time.NewTicker(markEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ping(ctx, markPrefix+strconv.FormatInt(time.Now().UnixNano(), 10))
	}
}

// subscribeInterval is the publisher process's pace in BenchmarkSubscribe:
// one batch message every interval, each of 4 sessions.
var subscribeInterval = flag.Duration("sub-interval", time.Millisecond, "the pace of BenchmarkSubscribe's publisher")

// subscribeMsgSize is the size of a batch message of 4 sessions.
const subscribeMsgSize = 4 * valueSize

// BenchmarkSubscribe is a node's receive: subs subscribers (each its own
// client, as each node has its own) on one channel, and another process
// publishing b.N messages at a steady pace on its own connection. CPU is
// per message received (b.N × subs in all), Redis's per message published
// and delivered to all.
func BenchmarkSubscribe(b *testing.B) {
	addr := server(b)
	for _, subs := range []int{1, 2} {
		b.Run(fmt.Sprintf("subs=%d", subs), func(b *testing.B) {
			for _, name := range clients("goredis", "rueidis", "rueidis-hooks") {
				b.Run("client="+name, func(b *testing.B) {
					mk := map[string]func(testing.TB, string) subscriber{
						"goredis":       goRedisSubscriber,
						"rueidis":       rueidisSubscriber,
						"rueidis-hooks": rueidisHooksSubscriber,
					}[name]
					receive(b, addr, subs, mk)
				})
			}
		})
	}
}

// receive runs one BenchmarkSubscribe case.
func receive(b *testing.B, addr string, subs int, mk func(testing.TB, string) subscriber) {
	channel := "bus:" + b.Name() + ":" + strconv.Itoa(b.N)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var waits []func()
	left := make([]atomic.Int64, subs)
	all := make(chan struct{}, subs)
	for i := range subs {
		left[i].Store(int64(b.N))
		waits = append(waits, mk(b, addr)(ctx, channel, func(p []byte) {
			if len(p) != subscribeMsgSize {
				panic("wrong message")
			}
			if left[i].Add(-1) == 0 {
				all <- struct{}{}
			}
		}))
	}
	waitSubscribers(b, addr, channel, subs)
	begin, wait := startPublisher(b, publisherSpec{addr: addr, channel: channel, n: b.N, size: subscribeMsgSize, interval: *subscribeInterval})
	b.ReportAllocs()
	m := startMeter(b, addr)
	begin()
	timeout := time.After(time.Duration(b.N)**subscribeInterval + 30*time.Second)
	for range subs {
		select {
		case <-all:
		case <-timeout:
			b.Fatalf("messages missing: %d left of %d on the first subscriber", left[0].Load(), b.N)
		}
	}
	m.stop(b, b.N*subs, "msg")
	if err := wait(); err != nil {
		b.Fatal(err)
	}
	cancel()
	for _, w := range waits {
		w()
	}
}

// concurrency is how many goroutines BenchmarkConcurrent runs.
const concurrency = 8

// BenchmarkConcurrent is concurrency goroutines each sending SET (PX) then
// PUBLISH, one command at a time and waiting for each: rueidis merges
// concurrent commands into shared pipelines (auto-pipelining), go-redis
// takes a pooled connection for each. The -pipe cases send each pair as
// one pipeline instead, as the farm's publisher does. One op is one pair.
func BenchmarkConcurrent(b *testing.B) {
	addr := server(b)
	for _, name := range clients("goredis", "rueidis", "goredis-pipe", "rueidis-pipe") {
		b.Run("client="+name, func(b *testing.B) {
			channel := "bus:" + b.Name()
			val := []byte(strings.Repeat("v", valueSize))
			var pair func(ctx context.Context, key string) error
			switch name {
			case "goredis":
				c := newGoRedis(b, addr)
				pair = func(ctx context.Context, key string) error {
					if err := c.Set(ctx, key, val, recordTTL).Err(); err != nil {
						return err
					}
					return c.Publish(ctx, channel, val).Err()
				}
			case "rueidis":
				c := newRueidis(b, addr)
				pair = func(ctx context.Context, key string) error {
					if err := c.Do(ctx, c.B().Set().Key(key).Value(rueidis.BinaryString(val)).Px(recordTTL).Build()).Error(); err != nil {
						return err
					}
					return c.Do(ctx, c.B().Publish().Channel(channel).Message(rueidis.BinaryString(val)).Build()).Error()
				}
			case "goredis-pipe":
				send := goRedisBatcher(newGoRedis(b, addr), channel)
				pair = func(ctx context.Context, key string) error { return send(ctx, []string{key}, val, val) }
			case "rueidis-pipe":
				c := newRueidis(b, addr)
				pair = func(ctx context.Context, key string) error {
					for _, r := range c.DoMulti(ctx,
						c.B().Set().Key(key).Value(rueidis.BinaryString(val)).Px(recordTTL).Build(),
						c.B().Publish().Channel(channel).Message(rueidis.BinaryString(val)).Build()) {
						if err := r.Error(); err != nil {
							return err
						}
					}
					return nil
				}
			}
			prefix := "rec:" + b.Name() + ":" + strconv.Itoa(b.N) + ":"
			run := func(from, to int64) {
				var next atomic.Int64
				next.Store(from)
				var failed atomic.Pointer[error]
				var wg sync.WaitGroup
				for range concurrency {
					wg.Go(func() {
						for {
							i := next.Add(1) - 1
							if i >= to {
								return
							}
							ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
							err := pair(ctx, prefix+strconv.FormatInt(i, 10))
							cancel()
							if err != nil {
								failed.Store(&err)
								return
							}
						}
					})
				}
				wg.Wait()
				if err := failed.Load(); err != nil {
					b.Fatal(*err)
				}
			}
			run(-warmup*concurrency, 0)
			b.ReportAllocs()
			m := startMeter(b, addr)
			run(0, int64(b.N))
			m.stop(b, b.N, "op")
		})
	}
}
