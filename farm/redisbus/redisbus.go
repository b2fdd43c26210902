// Package redisbus is the farm's Redis transport, built on go-redis: a
// transport.Bus over PUBLISH/SUBSCRIBE (sharded SPUBLISH/SSUBSCRIBE on a
// cluster) and a transport.Store over keys with millisecond TTLs, pipelined.
//
// Every key of a farm starts with its name, so that several farms share a
// server without seeing each other. The farm's few coordination keys (the
// ticket key lease and key set, the revocation tombstones) live under one
// hash tag, "tlsfarm:{<farm>}:", in one slot of a cluster. Its session
// records, the bulk of its data, are "tlsfarm:<farm>:{<key>}": hashed by
// the session ID, so that they spread over every shard of a Redis Cluster.
// Values and messages are sealed by the farm:
// nothing in Redis is usable, or accepted back, without the farm secret,
// which is separate from any Redis password.
//
// Start with Open (or New, on a client of your own) and give the Transport
// to farm.Config as both Bus and Store.
package redisbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redact"
	"github.com/tlsfarm/tlsfarm/internal/retry"
)

// A Transport is a transport.Bus and a transport.Store on one Redis deployment.
type Transport struct {
	c       redis.UniversalClient
	cluster bool
	prefix  string // "tlsfarm:{farm}:", for coordination keys
	records string // "tlsfarm:farm:", for session records, "tlsfarm:farm:{key}"
	channel string
	own     bool // Close closes c

	// HealthInterval is how long a subscription may be silent before it is
	// pinged; a ping unanswered for as long again means the connection is
	// dead (a paused or partitioned server sends no reset). Default 5s.
	HealthInterval time.Duration
}

// Open connects to Redis at rawURL for the named farm. It does not wait for
// Redis: a transport opened while Redis is down works once it is up. It
// dials without go-redis's own retries (the farm retries with backoff) and
// routes go-redis's log lines to slog at debug level.
//
// URL forms (user and password for ACLs; query options as go-redis reads
// them, such as dial_timeout or pool_size):
//
//	redis://[user:password@]host:port[/db]             one server
//	rediss://...                                       one server, over TLS
//	redis+cluster://[user:password@]host:port?addr=host2:port&addr=...
//	redis+sentinel://[user:password@]host:port?master_name=NAME&addr=...
//
// A rediss+cluster or rediss+sentinel scheme adds TLS to either. A cluster
// URL may also set reload, how old the client's map of the cluster's slots
// may grow before it is read again (default DefaultClusterReload, e.g.
// reload=2s); the map is also read again after any failed command, so that
// a failover is followed as soon as the cluster has promoted a replica. A
// sentinel client follows the sentinels' announcement of a new master.
func Open(rawURL, farmName string) (*Transport, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("redisbus: bad URL: %v", redact.URLError(err))
	}
	base, kind, _ := strings.Cut(u.Scheme, "+")
	if base != "redis" && base != "rediss" {
		return nil, fmt.Errorf("redisbus: URL scheme %q: want redis, rediss, redis+cluster or redis+sentinel", u.Scheme)
	}
	u.Scheme = base
	q := u.Query()
	reload := DefaultClusterReload
	if q.Has("reload") {
		if kind != "cluster" {
			return nil, errors.New("redisbus: the reload option is for redis+cluster URLs")
		}
		reload, err = time.ParseDuration(q.Get("reload"))
		if err != nil || reload <= 0 {
			return nil, fmt.Errorf("redisbus: reload=%q: want a positive duration such as 2s", q.Get("reload"))
		}
		q.Del("reload")
		u.RawQuery = q.Encode()
	}
	plain := u.String()
	var c redis.UniversalClient
	cluster := false
	switch kind {
	case "":
		opt, err := redis.ParseURL(plain)
		if err != nil {
			return nil, fmt.Errorf("redisbus: %v", redact.URLError(err))
		}
		opt.ContextTimeoutEnabled = true
		if opt.DialerRetries == 0 && !u.Query().Has("dialer_retries") {
			opt.DialerRetries = 1
		}
		c = redis.NewClient(opt)
	case "cluster":
		opt, err := redis.ParseClusterURL(plain)
		if err != nil {
			return nil, fmt.Errorf("redisbus: %v", redact.URLError(err))
		}
		opt.ContextTimeoutEnabled = true
		opt.DialerRetries = max(opt.DialerRetries, 1)
		opt.ClusterStateReloadInterval = reload
		c = redis.NewClusterClient(opt)
		cluster = true
	case "sentinel":
		opt, err := redis.ParseFailoverURL(plain)
		if err != nil {
			return nil, fmt.Errorf("redisbus: %v", redact.URLError(err))
		}
		opt.ContextTimeoutEnabled = true
		opt.DialerRetries = max(opt.DialerRetries, 1)
		c = redis.NewFailoverClient(opt)
	default:
		return nil, fmt.Errorf("redisbus: URL scheme %q: unknown variant %q", u.Scheme, kind)
	}
	quietOnce.Do(func() { redis.SetLogger(quietLogger{}) })
	t, err := New(c, farmName)
	if err != nil {
		c.Close()
		return nil, err
	}
	t.cluster = cluster
	t.own = true
	return t, nil
}

// DefaultClusterReload is how old the map of a Redis Cluster's slots may
// grow before the transport reads it again, unless the URL sets reload.
const DefaultClusterReload = 5 * time.Second

var quietOnce sync.Once

// quietLogger sends go-redis's own log lines (one per failed dial while
// Redis is down) to slog at debug level; the farm reports outages itself.
// go-redis has one logger per process: Open installs this one.
type quietLogger struct{}

func (quietLogger) Printf(ctx context.Context, format string, v ...any) {
	slog.Debug("redisbus: go-redis: " + fmt.Sprintf(format, v...))
}

// New returns a transport for the named farm on a client the caller made
// (and closes). Set ContextTimeoutEnabled on its options, or lookups will
// not respect their deadlines.
func New(c redis.UniversalClient, farmName string) (*Transport, error) {
	if farmName == "" || strings.ContainsAny(farmName, "{}") {
		return nil, fmt.Errorf("redisbus: farm name %q must be non-empty and free of braces", farmName)
	}
	_, cluster := c.(*redis.ClusterClient)
	prefix := "tlsfarm:{" + farmName + "}:"
	return &Transport{c: c, cluster: cluster, prefix: prefix, records: "tlsfarm:" + farmName + ":",
		channel: prefix + "bus", HealthInterval: 5 * time.Second}, nil
}

// Close closes the client, if Open made it.
func (t *Transport) Close() error {
	if t.own {
		return t.c.Close()
	}
	return nil
}

// Ping checks that Redis answers (transport.Pinger): one PING, within ctx.
func (t *Transport) Ping(ctx context.Context) error { return t.c.Ping(ctx).Err() }

// Key returns the Redis key that holds the farm's coordination key k.
func (t *Transport) Key(k string) string { return t.prefix + k }

// RecordKey returns the Redis key that holds the farm's session record k.
// The record's own key is its hash tag, so that records spread over the
// slots of a cluster.
func (t *Transport) RecordKey(k string) string { return t.records + "{" + k + "}" }

// Channel returns the pub/sub channel of the farm.
func (t *Transport) Channel() string { return t.channel }

// Publish implements transport.Bus: one PUBLISH per message, in one pipeline.
func (t *Transport) Publish(ctx context.Context, msgs ...[]byte) error {
	if len(msgs) == 1 {
		return t.failed(t.publish(ctx, t.c, msgs[0]).Err())
	}
	_, err := t.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, m := range msgs {
			t.publish(ctx, p, m)
		}
		return nil
	})
	return err
}

func (t *Transport) publish(ctx context.Context, c redis.Cmdable, msg []byte) *redis.IntCmd {
	if t.cluster {
		return c.SPublish(ctx, t.channel, msg)
	}
	return c.Publish(ctx, t.channel, msg)
}

// Subscribe implements transport.Bus. go-redis reconnects and resubscribes a
// subscription whose connection fails; a subscription that falls silent for
// two health intervals without answering a ping is closed and made anew,
// after a wait from 50ms doubling to 1s, with jitter.
func (t *Transport) Subscribe(ctx context.Context, deliver func([]byte), state func(bool, error)) error {
	for failures := 1; ; failures++ {
		err := t.subscribeOnce(ctx, deliver, state)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		state(false, t.failed(err))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(retry.Backoff(failures, 50*time.Millisecond, time.Second)):
		}
	}
}

func (t *Transport) subscribeOnce(ctx context.Context, deliver func([]byte), state func(bool, error)) error {
	var ps *redis.PubSub
	if t.cluster {
		ps = t.c.SSubscribe(ctx, t.channel)
	} else {
		ps = t.c.Subscribe(ctx, t.channel)
	}
	defer ps.Close()
	// A blocked receive does not watch ctx: closing the subscription ends it.
	stop := context.AfterFunc(ctx, func() { ps.Close() })
	defer stop()
	silent := 0
	for {
		m, err := ps.ReceiveTimeout(ctx, t.HealthInterval)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				silent++
				if silent >= 2 {
					return errors.New("redisbus: subscription silent and unanswered ping")
				}
				ps.Ping(ctx)
				continue
			}
			// go-redis has dropped the connection and resubscribes on the
			// next receive; report the outage and pause briefly.
			state(false, t.failed(err))
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		silent = 0
		switch m := m.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" || m.Kind == "ssubscribe" {
				state(true, nil)
			}
		case *redis.Message:
			if len(m.Payload) > transport.MaxMessageSize {
				continue // the farm would refuse it: do not copy it
			}
			deliver([]byte(m.Payload))
		}
	}
}

// PutRecords implements transport.RecordStore: SET key value PX ttl, pipelined.
func (t *Transport) PutRecords(ctx context.Context, items ...transport.Item) error {
	if len(items) == 1 {
		it := items[0]
		return t.failed(t.c.Set(ctx, t.RecordKey(it.Key), it.Value, it.TTL).Err())
	}
	_, err := t.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, it := range items {
			p.Set(ctx, t.RecordKey(it.Key), it.Value, it.TTL)
		}
		return nil
	})
	return t.failed(err)
}

// PutAndPublish implements transport.Batcher: the SETs, the DELs and the
// PUBLISHes go in one pipeline, one round trip (on a cluster, one per
// shard, with a DEL per key).
func (t *Transport) PutAndPublish(ctx context.Context, items []transport.Item, dels []string, msgs [][]byte) error {
	_, err := t.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, it := range items {
			p.Set(ctx, t.RecordKey(it.Key), it.Value, it.TTL)
		}
		switch {
		case len(dels) == 0:
		case t.cluster:
			for _, k := range dels {
				p.Del(ctx, t.RecordKey(k))
			}
		default:
			full := make([]string, len(dels))
			for i, k := range dels {
				full[i] = t.RecordKey(k)
			}
			p.Del(ctx, full...)
		}
		for _, m := range msgs {
			t.publish(ctx, p, m)
		}
		return nil
	})
	return t.failed(err)
}

// GetRecord implements transport.RecordStore.
func (t *Transport) GetRecord(ctx context.Context, key string) ([]byte, error) {
	return t.get(ctx, t.RecordKey(key))
}

// Get implements transport.Coordinator.
func (t *Transport) Get(ctx context.Context, key string) ([]byte, error) {
	return t.get(ctx, t.prefix+key)
}

func (t *Transport) get(ctx context.Context, key string) ([]byte, error) {
	b, err := t.c.Get(ctx, key).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, transport.ErrNotFound
	}
	return b, t.failed(err)
}

// DeleteRecords implements transport.RecordStore: one DEL, or on a cluster,
// where the records lie in different slots, one DEL per key, pipelined.
func (t *Transport) DeleteRecords(ctx context.Context, keys ...string) error {
	if len(keys) == 0 {
		return nil
	}
	if !t.cluster || len(keys) == 1 {
		full := make([]string, len(keys))
		for i, k := range keys {
			full[i] = t.RecordKey(k)
		}
		return t.failed(t.c.Del(ctx, full...).Err())
	}
	_, err := t.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			p.Del(ctx, t.RecordKey(k))
		}
		return nil
	})
	return t.failed(err)
}

// TakeRecord implements transport.RecordTaker with GETDEL: one atomic command.
func (t *Transport) TakeRecord(ctx context.Context, key string) ([]byte, error) {
	b, err := t.c.GetDel(ctx, t.RecordKey(key)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, transport.ErrNotFound
	}
	return b, t.failed(err)
}

// AddRecord implements transport.RecordTaker: SET key value NX PX ttl.
func (t *Transport) AddRecord(ctx context.Context, it transport.Item) (bool, error) {
	ok, err := t.c.SetNX(ctx, t.RecordKey(it.Key), it.Value, it.TTL).Result()
	return ok, t.failed(err)
}

// SwapRecord implements transport.RecordSwapper: SET key value PX ttl GET, one
// atomic command (Redis 6.2 or later).
func (t *Transport) SwapRecord(ctx context.Context, it transport.Item) ([]byte, error) {
	b, err := t.c.SetArgs(ctx, t.RecordKey(it.Key), it.Value, redis.SetArgs{TTL: it.TTL, Get: true}).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, transport.ErrNotFound
	}
	return b, t.failed(err)
}

// SetNX implements transport.Coordinator: SET key value NX PX ttl.
func (t *Transport) SetNX(ctx context.Context, key string, value []byte, ttl time.Duration) (bool, error) {
	ok, err := t.c.SetNX(ctx, t.prefix+key, value, ttl).Result()
	return ok, t.failed(err)
}

var casScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == 'absent' then
  if cur then return 0 end
elseif cur ~= ARGV[2] then
  return 0
end
if tonumber(ARGV[4]) > 0 then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[3])
end
return 1
`)

// CompareAndSwap implements transport.Coordinator with a Lua script.
func (t *Transport) CompareAndSwap(ctx context.Context, key string, old, new []byte, ttl time.Duration) (bool, error) {
	mode := "match"
	if old == nil {
		mode = "absent"
	}
	n, err := casScript.Run(ctx, t.c, []string{t.prefix + key}, mode, old, new, ttl.Milliseconds()).Int()
	return n == 1, t.failed(err)
}

// setAddScript adds a member scored by its expiry and keeps the set's own
// TTL at its latest member's.
var setAddScript = redis.NewScript(`
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], last[2])
return 1
`)

// SetAdd implements transport.Coordinator with a sorted set scored by expiry.
func (t *Transport) SetAdd(ctx context.Context, key string, member []byte, until time.Time) error {
	return t.failed(setAddScript.Run(ctx, t.c, []string{t.prefix + key}, until.UnixMilli(), member).Err())
}

// setMembersScript drops expired members by the server's clock and returns
// the rest, at most ARGV[1] of them: those that lapse last.
var setMembersScript = redis.NewScript(`
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
return redis.call('ZRANGE', KEYS[1], -tonumber(ARGV[1]), -1)
`)

// SetMembers implements transport.Coordinator; it returns at most
// transport.MaxSetMembers members, those that lapse last.
func (t *Transport) SetMembers(ctx context.Context, key string) ([][]byte, error) {
	v, err := setMembersScript.Run(ctx, t.c, []string{t.prefix + key}, transport.MaxSetMembers).StringSlice()
	if err != nil {
		return nil, t.failed(err)
	}
	out := make([][]byte, len(v))
	for i, s := range v {
		out[i] = []byte(s)
	}
	return out, nil
}

// Time implements transport.Coordinator with the TIME command.
func (t *Transport) Time(ctx context.Context) (time.Time, error) {
	now, err := t.c.Time(ctx).Result()
	return now, t.failed(err)
}

// failed returns err, and on a cluster, if err is a failure (not a missing
// key), has the client read the map of the cluster's slots again: a master
// that refuses connections or fails to answer may have been replaced, and
// go-redis learns of a new master by itself only from a redirection, which
// a dead master sends none of. Reads are coalesced by go-redis.
func (t *Transport) failed(err error) error {
	if err != nil && t.cluster && !errors.Is(err, redis.Nil) {
		if cc, ok := t.c.(*redis.ClusterClient); ok {
			cc.ReloadState(context.Background())
		}
	}
	return err
}

var (
	_ transport.Pinger  = (*Transport)(nil)
	_ transport.Bus     = (*Transport)(nil)
	_ transport.Store   = (*Transport)(nil)
	_ transport.Batcher = (*Transport)(nil)

	_ transport.RecordTaker   = (*Transport)(nil)
	_ transport.RecordSwapper = (*Transport)(nil)
)
