// Package redisbus is the farm's Redis transport, built on go-redis: a
// transport.Bus over PUBLISH/SUBSCRIBE (sharded SPUBLISH/SSUBSCRIBE on a
// cluster) and a transport.Store over keys with millisecond TTLs, pipelined.
//
// Every key of a farm starts with its name, so that several farms share a
// server without seeing each other. The farm's few coordination keys (the
// ticket key lease and key set, the revocation tombstones) live under one
// hash tag, "tlsfarm:{<farm>}:", in one slot of a cluster; a set among
// them (the tombstones) is a sorted set scored by when each member lapses,
// read a page at a time, with its version beside it at "<set>:version"
// (see SetVersion). Its session records, the bulk of its data, are
// "tlsfarm:<farm>:{<key>}": hashed by the session ID, so that they spread
// over every shard of a Redis Cluster.
// Values and messages are sealed by the farm:
// nothing in Redis is usable, or accepted back, without the farm secret,
// which is separate from any Redis password.
//
// # Delivery
//
// A node does not receive its own messages back (the farm would drop them
// unopened): Redis has no option for that, as NATS has, so each Transport
// draws a random ID of IDLen lowercase hex digits and publishes on a
// channel of its own, "tlsfarm:{<farm>}:bus:<id>", and subscribes with
// IDLen patterns that together match every such channel but its own: the
// i-th pattern matches the IDs that agree with its own on the first i
// digits and differ at digit i, so any other ID matches exactly one
// pattern. Every peer's message thus arrives once, and the node's own
// never: one delivery, read and wake-up fewer per message on every node,
// a third of them in a three-node farm. But Redis matches every PUBLISH on
// the server, to any channel, against every pattern subscribed there:
// IDLen per node, of every farm. On a 2-core VM with Redis 7.0 a pattern
// cost about 0.04µs a PUBLISH (more for farm names that share a long
// prefix), 0.6µs a node, and a delivery saved 5-8µs: Redis does less work
// as long as the server holds no more than about ten nodes, of all farms;
// past that it does more (the nodes still save their reads).
// Echo keeps a node off the patterns.
//
// A node that Redis does not let subscribe to the marker channel or the
// patterns (an ACL that grants the farm's channels, "&tlsfarm:{<farm>}:*":
// a PSUBSCRIBE must name an allowed pattern exactly; grant "&*" or
// "allchannels") keeps to the farm's shared channel, as with Echo, and
// logs a warning.
//
// Versions before this one publish and subscribe on the farm's one channel,
// "tlsfarm:{<farm>}:bus", and a Transport with Echo set does the same. To
// let such nodes share a farm with new ones, as during a rolling upgrade, a
// new node also subscribes to that channel (it hears old nodes there) and
// to a marker channel, "tlsfarm:{<farm>}:bus:v2", that only new nodes
// subscribe to. While it is subscribed it compares the two channels'
// subscriber counts (PUBSUB NUMSUB) every VersionCheckInterval, when its
// subscription is made, and soon after a message arrives on the shared
// channel: while the shared channel has more subscribers than the marker,
// an old node (or another client) listens there, and the node publishes
// on the shared channel, as old nodes do, and hears its own messages
// again. It also publishes there while it is not subscribed, or has not yet
// counted, and after a failed count: the shared channel reaches every
// node, old or new. A node of an old version that joins a farm of new ones
// misses their messages until they next count, VersionCheckInterval at
// most; when the last one leaves, the new nodes go back to channels of
// their own at their next count.
//
// A Redis Cluster keeps the farm's one channel, with sharded pub/sub
// (SPUBLISH, SSUBSCRIBE), which has no patterns: there every node receives
// its own messages.
//
// Start with Open (or New, on a client of your own) and give the Transport
// to farm.Config as both Bus and Store.
package redisbus

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
	channel string // the farm's shared channel, "tlsfarm:{farm}:bus"
	own     bool   // Close closes c
	// sub, if not nil, is the client the subscription is made on, and
	// the reads marked transport.PrimaryRead: one that subscribes and
	// reads on the masters, made by New from a cluster client that sends
	// reads to replicas (see subscriber, reader). Close closes it.
	sub *redis.ClusterClient

	id       string   // IDLen lowercase hex digits
	mine     string   // the channel this node publishes on, channel:id
	marker   string   // subscribed by every node that hears per-sender channels
	patterns []string // match every other node's channel, not mine
	shared   atomic.Bool
	refused  atomic.Bool // Redis refused the marker or the patterns (ACLs)

	// delivered is DeliveredThrough's mark: nanoseconds since markBase
	// (0: none), advanced by the answers to the subscription's marking
	// pings (see markDelivery).
	delivered atomic.Int64
	strike    *redis.Script // the farm's strike script (see strikeScript)
	strikes   sync.Map      // in a cluster, each group's, by its marker key

	// HealthInterval is how long a subscription may be silent before it is
	// pinged; a ping unanswered for as long again means the connection is
	// dead (a paused or partitioned server sends no reset). Default 5s.
	HealthInterval time.Duration

	// Echo, if set, makes the transport publish and subscribe on the farm's
	// one shared channel only, as versions before per-sender channels did:
	// every node, the sender included, receives every message, and other
	// nodes count this one as an old version. Set it before the first call
	// to Publish or Subscribe. A cluster always echoes.
	Echo bool

	// VersionCheckInterval is how often a subscribed transport counts the
	// subscribers of the farm's shared and marker channels, to learn
	// whether a node of an older version (or another client) listens on
	// the shared channel only; see the package doc. Default 1s.
	VersionCheckInterval time.Duration

	// WaitReplicas, if positive, makes the farm's exactly-once operations
	// (TakeRecord, the take of a single-use session, and AddRecord, the
	// add behind ConsumeToken and 0-RTT anti-replay), and SetAdd, the
	// write of a revocation's tombstone, follow their command
	// with WAIT WaitReplicas WaitTimeout, in the same round trip: Redis
	// replicates asynchronously, and a master that answers a take or a
	// SET NX and dies before a replica has it lets the replica promoted in
	// its place serve the consumed session, or accept the replayed token,
	// again. With fewer acknowledgements than WaitReplicas the outcome is
	// unknown and the call fails with ErrNotReplicated: the farm then
	// neither resumes the session nor accepts the early data (the record
	// or token stays taken on this master), and keeps a revocation pending
	// and writes it again until a replica has it. Zero, the default, waits for
	// no replica: right for a single master, which has none to lose the
	// write to. WAIT narrows the window but does not close it: Redis may
	// still promote a replica that had not acknowledged (see the Redis
	// documentation of WAIT). Set it before the farm uses the transport.
	WaitReplicas int

	// WaitTimeout is how long WAIT waits for WaitReplicas
	// acknowledgements (rounded to a millisecond, at least one). Keep it
	// well below the farm's LookupTimeout and the client's read timeout.
	// Default DefaultWaitTimeout.
	WaitTimeout time.Duration
}

// DefaultWaitTimeout is Transport.WaitTimeout's default, and the
// wait_timeout URL option's.
const DefaultWaitTimeout = 50 * time.Millisecond

// ErrNotReplicated is the error of TakeRecord and AddRecord when Redis
// applied the command but fewer than Transport.WaitReplicas replicas
// acknowledged it within Transport.WaitTimeout: the outcome is unknown (a
// failover now could undo it), and the caller must act as if it failed.
// Test it with errors.Is: the transport wraps it with the counts. It is
// also a transport.ErrUnconfirmed.
var ErrNotReplicated error = notReplicated{}

// notReplicated is ErrNotReplicated's type.
type notReplicated struct{}

func (notReplicated) Error() string {
	return "redisbus: fewer replicas than wait_replicas acknowledged the write"
}

// Is makes ErrNotReplicated a transport.ErrUnconfirmed.
func (notReplicated) Is(target error) bool { return target == transport.ErrUnconfirmed }

// IDLen is the length of a Transport's random ID, in hex digits (64 bits):
// nodes whose IDs collide would not hear each other. The patterns match IDs
// of this length only, so a version that changes it must also rename the
// marker channel: nodes then count each other as old, and keep to the
// shared channel while both versions run.
const IDLen = 16

// noResend turns off go-redis's retries of a command that failed on its
// connection (default 3, with backoff, on a new connection), unless the
// URL asks for them (max_retries). Such a retry is sent when the
// connection comes back, with what the farm knew when it first sent the
// command: a new session's first write, cut off in flight while its issuer
// was cut off, landed whole after the issuer had come back and heard the
// session cut past its grace, and a node that loaded it before the issuer
// deleted it again resumed it (TestWriteCutInFlightNotSentAgain). The farm
// keeps a failed write for later and reads the cache again before it
// writes it (see farm's refreshLater). A Redis Cluster client has no such
// switch: it tries a command again after a network error within the loop
// that follows MOVED and ASK, so the transport sends each command that
// changes the farm's state as one that says it must not be retried (see
// onceCmd), on every client.
func noResend(maxRetries *int, q url.Values) {
	if *maxRetries == 0 && !q.Has("max_retries") {
		*maxRetries = -1
	}
}

// Open connects to Redis at rawURL for the named farm. It does not wait for
// Redis: a transport opened while Redis is down works once it is up. It
// sends no command again after a failure, as go-redis would by default
// (see noResend), nor, on a Redis Cluster, any that changes the farm's
// state (see onceCmd; a cluster still follows MOVED and ASK): the farm
// retries with backoff, as it knows things then.
// It routes go-redis's log lines to slog at debug level.
//
// URL forms (user and password for ACLs; query options as go-redis reads
// them, such as dial_timeout or pool_size):
//
//	redis://[user:password@]host:port[/db]             one server
//	rediss://...                                       one server, over TLS
//	redis+cluster://[user:password@]host:port?addr=host2:port&addr=...
//	redis+sentinel://[user:password@]host:port?master_name=NAME&addr=...
//
// A rediss+cluster or rediss+sentinel scheme adds TLS to either. Any URL
// may set echo=true, to set the Transport's Echo. A cluster
// URL may also set reload, how old the client's map of the cluster's slots
// may grow before it is read again (default DefaultClusterReload, e.g.
// reload=2s); the map is also read again after any failed command, so that
// a failover is followed as soon as the cluster has promoted a replica.
// A cluster URL's read_only (or route_by_latency or route_randomly, which
// imply it) sends reads to replicas, as go-redis does, but the transport
// subscribes on the master of the farm's channel all the same, so that its
// delivery mark orders what the master took (see masterSubscriber). A
// sentinel client follows the sentinels' announcement of a new master; a
// sentinel URL may not set replica_only, route_by_latency or
// route_randomly (the farm writes and publishes on the master).
// Any URL may set wait_replicas, the Transport's WaitReplicas (a count, 0
// by default), and with it wait_timeout, its WaitTimeout (a duration such
// as 50ms, DefaultWaitTimeout by default): set wait_replicas to at least 1
// on a Sentinel or Cluster deployment where single use or 0-RTT
// anti-replay must hold through a failover.
// An option given twice (addr excepted) is an error.
func Open(rawURL, farmName string) (*Transport, error) {
	t, secrets, err := open(rawURL, farmName)
	if err != nil {
		// go-redis's own errors quote parts of the URL.
		return nil, redact.Error(err, secrets)
	}
	return t, nil
}

// open is Open. It also returns the URL's secrets, for Open to redact from
// its error: the password, and a sentinel URL's password option (the
// master's password, the user information being the sentinels').
func open(rawURL, farmName string) (*Transport, []string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, nil, fmt.Errorf("redisbus: bad URL: %v", redact.URLError(err))
	}
	secrets := redact.Passwords(u)
	for _, p := range u.Query()["password"] {
		secrets = append(secrets, p, url.QueryEscape(p))
	}
	if err := redact.CheckAt(u); err != nil {
		return nil, secrets, fmt.Errorf("redisbus: bad URL: %v", err)
	}
	base, kind, _ := strings.Cut(u.Scheme, "+")
	if base != "redis" && base != "rediss" {
		return nil, secrets, fmt.Errorf("redisbus: URL scheme %q: want redis, rediss, redis+cluster or redis+sentinel", u.Scheme)
	}
	u.Scheme = base
	q := u.Query()
	// go-redis takes the last of a repeated option and this function the
	// first: refuse what would be read two ways. Only addr lists servers.
	for _, k := range slices.Sorted(maps.Keys(q)) {
		if n := len(q[k]); n > 1 && k != "addr" {
			return nil, secrets, fmt.Errorf("redisbus: URL option %q is given %d times: give it once", k, n)
		}
	}
	echo := false
	if q.Has("echo") {
		echo, err = strconv.ParseBool(q.Get("echo"))
		if err != nil {
			return nil, secrets, fmt.Errorf("redisbus: echo=%q: want true or false", q.Get("echo"))
		}
		q.Del("echo")
		u.RawQuery = q.Encode()
	}
	reload := DefaultClusterReload
	if q.Has("reload") {
		if kind != "cluster" {
			return nil, secrets, errors.New("redisbus: the reload option is for redis+cluster URLs")
		}
		reload, err = time.ParseDuration(q.Get("reload"))
		if err != nil || reload <= 0 {
			return nil, secrets, fmt.Errorf("redisbus: reload=%q: want a positive duration such as 2s", q.Get("reload"))
		}
		q.Del("reload")
		u.RawQuery = q.Encode()
	}
	waitN, waitTimeout, err := waitOptions(q)
	if err != nil {
		return nil, secrets, err
	}
	q.Del("wait_replicas")
	q.Del("wait_timeout")
	u.RawQuery = q.Encode()
	plain := u.String()
	var c redis.UniversalClient
	cluster := false
	switch kind {
	case "":
		opt, err := redis.ParseURL(plain)
		if err != nil {
			return nil, secrets, fmt.Errorf("redisbus: %v", redact.URLError(err))
		}
		if opt.PoolSize < 0 {
			return nil, secrets, errNegativePool
		}
		opt.ContextTimeoutEnabled = true
		if opt.DialerRetries == 0 && !u.Query().Has("dialer_retries") {
			opt.DialerRetries = 1
		}
		noResend(&opt.MaxRetries, u.Query())
		c = redis.NewClient(opt)
	case "cluster":
		if p := strings.TrimPrefix(u.Path, "/"); p != "" && p != "0" {
			// go-redis ignores the path of a cluster URL.
			return nil, secrets, fmt.Errorf("redisbus: database %q in a cluster URL: a Redis Cluster has database 0 only", p)
		}
		opt, err := redis.ParseClusterURL(plain)
		if err != nil {
			return nil, secrets, fmt.Errorf("redisbus: %v", redact.URLError(err))
		}
		if opt.PoolSize < 0 {
			return nil, secrets, errNegativePool
		}
		opt.ContextTimeoutEnabled = true
		opt.DialerRetries = max(opt.DialerRetries, 1)
		opt.ClusterStateReloadInterval = reload
		c = redis.NewClusterClient(opt)
		cluster = true
	case "sentinel":
		opt, err := redis.ParseFailoverURL(plain)
		if err != nil {
			return nil, secrets, fmt.Errorf("redisbus: %v", redact.URLError(err))
		}
		if opt.PoolSize < 0 {
			return nil, secrets, errNegativePool
		}
		if opt.MasterName == "" {
			return nil, secrets, errors.New("redisbus: a redis+sentinel URL needs master_name, the name the sentinels know the master by")
		}
		// go-redis's failover client panics on the two routings (they are
		// for its failover cluster client), and with replica_only sends
		// every command to a replica: the farm's writes fail there, and
		// its messages reach that replica's subscribers only.
		for _, o := range []struct {
			name string
			on   bool
		}{{"replica_only", opt.ReplicaOnly}, {"route_by_latency", opt.RouteByLatency}, {"route_randomly", opt.RouteRandomly}} {
			if o.on {
				return nil, secrets, fmt.Errorf("redisbus: %s in a redis+sentinel URL: the farm writes and publishes on the master; leave it off", o.name)
			}
		}
		opt.ContextTimeoutEnabled = true
		opt.DialerRetries = max(opt.DialerRetries, 1)
		noResend(&opt.MaxRetries, u.Query())
		c = redis.NewFailoverClient(opt)
	default:
		return nil, secrets, fmt.Errorf("redisbus: URL scheme %q: unknown variant %q", u.Scheme, kind)
	}
	quietOnce.Do(func() { redis.SetLogger(quietLogger{}) })
	t, err := New(c, farmName)
	if err != nil {
		c.Close()
		return nil, secrets, err
	}
	t.cluster = cluster
	t.own = true
	t.Echo = echo
	t.WaitReplicas, t.WaitTimeout = waitN, waitTimeout
	return t, secrets, nil
}

// waitOptions reads the URL options wait_replicas and wait_timeout.
func waitOptions(q url.Values) (int, time.Duration, error) {
	n, timeout := 0, DefaultWaitTimeout
	if q.Has("wait_replicas") {
		v, err := strconv.Atoi(q.Get("wait_replicas"))
		if err != nil || v < 0 {
			return 0, 0, fmt.Errorf("redisbus: wait_replicas=%q: want a count of replicas, 0 or more", q.Get("wait_replicas"))
		}
		n = v
	}
	if q.Has("wait_timeout") {
		if n == 0 {
			return 0, 0, errors.New("redisbus: wait_timeout without wait_replicas: set wait_replicas to 1 or more")
		}
		d, err := time.ParseDuration(q.Get("wait_timeout"))
		if err != nil || d <= 0 {
			return 0, 0, fmt.Errorf("redisbus: wait_timeout=%q: want a positive duration such as 50ms", q.Get("wait_timeout"))
		}
		timeout = d
	}
	return n, timeout, nil
}

// errNegativePool is Open's error for a negative pool_size, which go-redis
// parses and then panics on when it makes a pool.
var errNegativePool = errors.New("redisbus: pool_size must not be negative")

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
	t := &Transport{c: c, cluster: cluster, prefix: prefix, records: "tlsfarm:" + farmName + ":",
		channel: prefix + "bus", HealthInterval: 5 * time.Second, VersionCheckInterval: time.Second}
	if !cluster {
		t.strike = newStrikeScript(t.records)
	}
	t.sub = masterSubscriber(c)
	t.id = newID()
	t.mine = t.channel + ":" + t.id
	t.marker = t.channel + ":v2"
	t.patterns = exclusionPatterns(t.channel+":", t.id)
	t.shared.Store(true)
	return t, nil
}

// masterSubscriber returns, for a cluster client that sends read-only
// commands to replicas (ReadOnly, or RouteByLatency or RouteRandomly,
// which imply it: the read_only, route_by_latency and route_randomly URL
// options), a client of the same options that does not, to subscribe on;
// nil for any other client.
//
// go-redis sends such a client's SSUBSCRIBE to a node it picks for reads:
// a replica of the channel's slot. A replica passes on a sharded message
// only once it has it from its master, over the cluster bus, and answers
// a PING on the subscription in line with what it passed on, not with what
// the master took: the marking ping (see markDelivery) then said current
// while the master held messages back from the replica, a revocation
// among them, and a node admitted the carried copy of a revoked session,
// or resumed one it held, after RevokeSession said applied
// (TestClusterReadOnlyMarkOrdersMaster). On the master, the channel's
// messages and the ping are in the order the master took them. The
// records are still read where the options say, but for the reads that
// decide the farm's promises (see reader).
func masterSubscriber(c redis.UniversalClient) *redis.ClusterClient {
	cc, ok := c.(*redis.ClusterClient)
	if !ok {
		return nil
	}
	o := *cc.Options()
	if !o.ReadOnly && !o.RouteByLatency && !o.RouteRandomly {
		return nil
	}
	o.ReadOnly, o.RouteByLatency, o.RouteRandomly = false, false, false
	return redis.NewClusterClient(&o)
}

// reader returns the client to read on under ctx: the master-only client
// (see masterSubscriber) for a read the farm marked transport.PrimaryRead,
// the client the options made for any other. A replica answers a read in
// line with what it has, which lags its master: cut off from it, for as
// long as the cut lasts. Its "no mark" let a gated hit resume a session
// revoked on another node, reported applied
// (TestClusterReadOnlyGateReadsMaster); its old set version closed a heal
// without reading the revocations added meanwhile. Without read_only and
// route_* there is one client, and no context is looked into.
func (t *Transport) reader(ctx context.Context) redis.UniversalClient {
	if t.sub != nil && transport.IsPrimaryRead(ctx) {
		return t.sub
	}
	return t.c
}

// master returns the client whose reads go to the masters (see
// masterSubscriber): the reads of a write made in steps (splitWrite)
// decide what it writes, and a replica of the node giving a slot up
// neither has the keys already moved nor answers ASK for them
// (TestClusterReadOnlySplitReadsMaster).
func (t *Transport) master() redis.UniversalClient {
	if t.sub != nil {
		return t.sub
	}
	return t.c
}

// subscriber returns the client to subscribe on.
func (t *Transport) subscriber() redis.UniversalClient {
	if t.sub != nil {
		return t.sub
	}
	return t.c
}

// newID returns IDLen random lowercase hex digits.
func newID() string {
	var b [IDLen / 2]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// exclusionPatterns returns the len(id) glob patterns that together match
// prefix+other, for every other of len(id) bytes but id, each exactly once:
// pattern i is prefix, id[:i], "[^" id[i] "]", and a "?" for each byte
// after i. prefix (the farm name in it) is escaped, so that no farm's
// patterns match another farm's channels. The patterns match no channel
// of any other length, such as the marker.
func exclusionPatterns(prefix, id string) []string {
	p := globEscape(prefix)
	out := make([]string, len(id))
	for i := range id {
		out[i] = p + id[:i] + "[^" + id[i:i+1] + "]" + strings.Repeat("?", len(id)-1-i)
	}
	return out
}

// globEscape escapes the bytes that Redis glob patterns treat specially.
func globEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\', '*', '?', '[', ']':
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Close closes the client, if Open made it, and the one New made to
// subscribe on, if any.
func (t *Transport) Close() error {
	var err error
	if t.sub != nil {
		err = t.sub.Close()
	}
	if t.own {
		err = errors.Join(t.c.Close(), err)
	}
	return err
}

// Ping checks that Redis answers (transport.Pinger): one PING, within ctx.
func (t *Transport) Ping(ctx context.Context) error { return t.c.Ping(ctx).Err() }

// Key returns the Redis key that holds the farm's coordination key k.
func (t *Transport) Key(k string) string { return t.prefix + k }

// RecordKey returns the Redis key that holds the farm's session record k.
// The record's own key is its hash tag, so that records spread over the
// slots of a cluster.
func (t *Transport) RecordKey(k string) string { return t.records + "{" + k + "}" }

// CutMarkKey returns the Redis key of the cut mark that a cut of the
// record at the farm key k leaves when it finds no record (see
// transport.Item.IfPresent): the record's key and a suffix, so that its
// hash tag, and its slot on a cluster, are the record's, and one script
// reads and writes both.
func (t *Transport) CutMarkKey(k string) string { return t.RecordKey(k) + cutMarkSuffix }

const cutMarkSuffix = ":cut"

// RetireMarkKey returns the Redis key of the retirement mark that a
// retirement of the record at the farm key k leaves when it finds no
// record (see transport.Item.Retire): the record's key and a suffix, in
// the record's slot, as CutMarkKey's.
func (t *Transport) RetireMarkKey(k string) string { return t.RecordKey(k) + retireMarkSuffix }

const retireMarkSuffix = ":gone"

// CutLifeKey returns the Redis key of the lapsed-cut mark that a cut of
// the record at k leaves, whether or not it finds the record (see
// transport.Item.Life): the record's key and a suffix, in the record's
// slot. It outlives the cut, for the session's remaining life, and a
// late write or a write-back that finds it without the cut mark writes
// nothing.
func (t *Transport) CutLifeKey(k string) string { return t.RecordKey(k) + cutLifeSuffix }

const cutLifeSuffix = ":cutlife"

// Channel returns the pub/sub channel of the farm.
func (t *Transport) Channel() string { return t.channel }

// Publish implements transport.Bus: one PUBLISH per message, in one pipeline.
func (t *Transport) Publish(ctx context.Context, msgs ...[]byte) error {
	if len(msgs) == 1 {
		return t.failed(t.publish(ctx, once{t.c}, msgs[0]).Err())
	}
	_, err := t.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, m := range msgs {
			t.publish(ctx, once{p}, m)
		}
		return nil
	})
	return t.failed(err)
}

// publish sends msg on the cluster's sharded channel, on the shared
// channel while an old node may listen there (see the package doc), or
// else on the node's own; at most once.
func (t *Transport) publish(ctx context.Context, c once, msg []byte) *redis.IntCmd {
	switch {
	case t.cluster:
		return c.SPublish(ctx, t.channel, msg)
	case t.Echo || t.shared.Load():
		return c.Publish(ctx, t.channel, msg)
	}
	return c.Publish(ctx, t.mine, msg)
}

// Subscribe implements transport.Bus. Unless Echo is set or Redis is a
// cluster, it subscribes to the farm's shared channel, the marker channel
// and the patterns of the node's ID (see the package doc), and reports up
// once all are in place. go-redis reconnects and resubscribes all of a
// subscription whose connection fails; a subscription that falls silent
// for two health intervals without answering a ping, or that Redis ends,
// is closed and made anew, after a wait from 50ms doubling to 1s, with
// jitter, counted from the last subscription that was up.
func (t *Transport) Subscribe(ctx context.Context, deliver func([]byte), state func(bool, error)) error {
	for failures := 1; ; failures++ {
		up := false
		err := t.subscribeOnce(ctx, deliver, func(u bool, err error) {
			up = up || u
			state(u, err)
		})
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if up {
			failures = 1
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
	var subscribe func() // makes the subscription's connection, and subscribes
	want := 1            // subscriptions on the connection once all are confirmed
	perSender := !t.cluster && !t.Echo && !t.refused.Load()
	switch {
	case t.cluster:
		ps = t.subscriber().SSubscribe(ctx)
		subscribe = func() { ps.SSubscribe(ctx, t.channel) }
	case !perSender:
		ps = t.c.Subscribe(ctx)
		subscribe = func() { ps.Subscribe(ctx, t.channel) }
	default:
		// One SUBSCRIBE for both channels, so that no other node counts
		// this one on the shared channel and not on the marker. go-redis
		// resubscribes the same way, then the patterns, after a reconnect.
		ps = t.c.Subscribe(ctx)
		subscribe = func() {
			ps.Subscribe(ctx, t.channel, t.marker)
			ps.PSubscribe(ctx, t.patterns...)
		}
		want = 2 + len(t.patterns)
	}
	// On a cluster, watch the other shards for a failover from now on,
	// before the subscription is made: one that ends after this point and
	// before the subscription is up is seen too.
	var replaced atomic.Bool
	if cc, ok := t.c.(*redis.ClusterClient); ok {
		wctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			if t.watchShards(wctx, cc, shardWatchEvery) {
				replaced.Store(true)
				ps.Close()
			}
		}()
		defer func() {
			cancel()
			<-done
		}()
	}
	// Errors show in the receive. Making the connection (a dial, then
	// HELLO) does not watch ctx, and until it is made the subscription
	// holds its lock, so Close would wait too: on a hung server that
	// lasts the client's read timeout (3 s by default). Leave it behind,
	// to close the subscription when it ends, if ctx ends first.
	subscribed := make(chan struct{})
	go func() {
		defer close(subscribed)
		subscribe()
	}()
	select {
	case <-subscribed:
	case <-ctx.Done():
		go func() {
			<-subscribed
			ps.Close()
		}()
		return ctx.Err()
	}
	defer ps.Close()
	// A blocked receive does not watch ctx: closing the subscription ends it.
	stop := context.AfterFunc(ctx, func() { ps.Close() })
	defer stop()
	var count chan struct{} // asks the counter for a count now
	if perSender {
		count = make(chan struct{}, 1)
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			t.countVersions(cctx, count)
		}()
		defer func() {
			cancel()
			<-done
			t.shared.Store(true)
		}()
	}
	// Every mark is of this subscription only: none before it is up, and
	// none once it is down or over.
	defer t.delivered.Store(0)
	var upAt atomic.Int64 // when the subscription was last seen up (since markBase), 0 while down
	// A PING that fails to write makes go-redis drop the connection and
	// subscribe again on a new one at once, inside the PING: what the old
	// connection still held unread is lost, and the receive below, not
	// blocked on the old connection at that moment (a reader that fell
	// behind), would read on from the new one without an error, so the
	// farm would not see the gap. pingLost records such a failure.
	var pingLost atomic.Bool
	mctx, stopMarks := context.WithCancel(ctx)
	marks := make(chan struct{})
	go func() {
		defer close(marks)
		t.markDelivery(mctx, ps, &upAt, &pingLost)
	}()
	defer func() {
		stopMarks()
		<-marks
	}()
	silent, lost := 0, 0 // lost: receive errors since the subscription was last up
	// A subscription not confirmed in full within two health intervals
	// (a SUBSCRIBE or PSUBSCRIBE lost with a connection as it was made) is
	// made anew.
	up, confirmBy := false, time.Now().Add(2*t.HealthInterval)
	for {
		m, err := ps.ReceiveTimeout(ctx, t.HealthInterval)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if pingLost.Load() {
			return errPingLost
		}
		if replaced.Load() {
			return errMasterReplaced
		}
		if !up && time.Now().After(confirmBy) {
			return errors.New("redisbus: subscription not confirmed")
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				silent++
				if silent >= 2 {
					return errors.New("redisbus: subscription silent and unanswered ping")
				}
				if ps.Ping(ctx) != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					return errPingLost
				}
				continue
			}
			if isReply(err) && !(perSender && !up && refusal(err)) {
				// Redis refused a SUBSCRIBE on a connection that stays up
				// (MOVED from a master that no longer holds the channel's
				// slot, CLUSTERDOWN, LOADING): go-redis subscribes anew
				// only after a failed connection, so this one would stay
				// subscribed to nothing. Make a new one.
				return err
			}
			if perSender && !up && refusal(err) {
				// An ACL that grants the farm's channels but not the
				// patterns (a PSUBSCRIBE must name an allowed pattern
				// exactly), or a proxy without PSUBSCRIBE: keep to the
				// shared channel, as Echo does, and subscribe anew.
				if !t.refused.Swap(true) {
					slog.Warn("redisbus: Redis refused the per-sender subscriptions; this node uses the farm's shared channel only, and receives its own messages", "err", err)
				}
				return err
			}
			// go-redis has dropped the connection and resubscribes on the
			// next receive; report the outage and pause, from 100ms
			// doubling to 1s while Redis stays unreachable. Until the
			// subscription is back and has counted again, publish where
			// every node hears it.
			t.shared.Store(true)
			up, confirmBy = false, time.Now().Add(2*t.HealthInterval)
			upAt.Store(0)
			t.delivered.Store(0)
			state(false, t.failed(err))
			lost++
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(retry.Backoff(lost, 100*time.Millisecond, time.Second)):
			}
			continue
		}
		silent = 0
		switch m := m.(type) {
		case *redis.Subscription:
			switch m.Kind {
			case "subscribe", "psubscribe", "ssubscribe":
				if m.Count == want {
					up, lost = true, 0
					upAt.Store(max(int64(time.Since(markBase)), 1))
					state(true, nil)
					poke(count)
				}
			case "unsubscribe", "punsubscribe", "sunsubscribe":
				// The transport never unsubscribes: Redis ended the
				// subscription on a connection that stays up, as a
				// cluster node does for a sharded channel whose slot
				// moved to another master (a resharding) or when it
				// became a replica (a manual failover). Nothing more
				// would arrive on it, and pings are still answered.
				return errUnsubscribed
			}
		case *redis.Pong:
			// Redis answers a PING on the subscription's connection
			// after every message it took before it: a marking ping's
			// answer marks what was delivered (see markDelivery).
			if d, ok := strings.CutPrefix(m.Payload, markPayload); ok && up {
				if sent, err := strconv.ParseInt(d, 10, 64); err == nil && sent >= upAt.Load() && upAt.Load() != 0 {
					if sent > t.delivered.Load() {
						t.delivered.Store(sent)
					}
				}
			}
		case *redis.Message:
			if m.Channel == t.marker {
				continue // nothing is sent there
			}
			if perSender && m.Pattern == "" && !t.shared.Load() {
				// An old node, or a new one that has not counted yet:
				// count now rather than at the next interval.
				poke(count)
			}
			if len(m.Payload) > transport.MaxMessageSize {
				continue // the farm would refuse it: do not copy it
			}
			deliver([]byte(m.Payload))
		}
	}
}

// DeliveredThrough implements transport.DeliveryMarker. While the
// subscription is up, Subscribe sends a PING on its connection every
// MarkInterval, its payload the time it was sent: Redis answers it after
// every message it had taken before it (it writes both to the connection
// in the order it handled them), so once the answer is read, every message
// taken before that time has been delivered.
func (t *Transport) DeliveredThrough() time.Time {
	d := t.delivered.Load()
	if d == 0 {
		return time.Time{}
	}
	return markBase.Add(time.Duration(d))
}

// markBase is the origin of the marks (a time with a monotonic reading).
var markBase = time.Now()

// markPayload begins the payload of a marking ping.
const markPayload = "tlsfarm-mark:"

// MarkInterval is how often a subscription that is up marks its delivery
// (see DeliveredThrough).
const MarkInterval = 100 * time.Millisecond

// markDelivery sends a marking ping on ps every MarkInterval while the
// subscription is up (upAt set), until ctx ends. The time in it is taken
// before it is written: Redis handles it later still.
func (t *Transport) markDelivery(ctx context.Context, ps *redis.PubSub, upAt *atomic.Int64, lost *atomic.Bool) {
	tick := time.NewTicker(MarkInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if upAt.Load() == 0 {
			continue
		}
		sent := max(int64(time.Since(markBase)), 1)
		if ps.Ping(ctx, markPayload+strconv.FormatInt(sent, 10)) != nil && ctx.Err() == nil {
			lost.Store(true)
		}
	}
}

// errPingLost ends a subscription whose connection a failed PING replaced.
var errPingLost = errors.New("redisbus: the subscription's connection failed under a PING and was replaced: what it held unread is lost; subscribing anew")

// shardWatchEvery is how often a subscription on a cluster asks for the
// cluster's masters (watchShards).
const shardWatchEvery = time.Second

// errUnsubscribed ends a subscription that Redis ended.
var errUnsubscribed = errors.New("redisbus: Redis ended the subscription (the channel's slot moved, or its master became a replica): subscribing anew")

// errMasterReplaced ends a subscription on a cluster when the master of
// another shard was replaced.
var errMasterReplaced = errors.New("redisbus: a master of the cluster was replaced (failover): subscribing anew, so that the farm re-sends what the promoted replica may lack")

// watchShards asks, every interval, the node that holds the farm's channel's
// slot (the one the sharded subscription is on) for its view of the
// cluster (CLUSTER NODES), and returns true once a master that held slots
// at an earlier answer holds none: a failover moved them to its replica.
// Masters that gain slots while it watches (a shard added to the cluster)
// are watched from their first answer on.
// It returns false when ctx ends, or when Redis refuses CLUSTER NODES.
//
// A failover of another shard leaves the subscription up, so the farm sees
// no gap; but the promoted replica may lack what its master acknowledged
// last, such as the deletes of retired or consumed sessions. Ending the
// subscription makes the farm settle a gap: its nodes re-send their kept
// retirements and cuts, which delete those records again.
//
// Each ask is one command to one node, bounded by interval: a node that
// hangs or is gone costs a missed ask, never a stuck watch. One node's
// view only moves forward, so a node that learns of a failover late
// delays the watch but never makes it see a failover that did not happen.
// The client's own slot map is not used: it is read from any node,
// including one that has not yet heard of the failover, or one that still
// lists a replica as a master of no slots (a young cluster).
func (t *Transport) watchShards(ctx context.Context, cc *redis.ClusterClient, interval time.Duration) bool {
	watched := map[string]bool{} // every master seen holding slots
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		held, err := t.slotHolders(ctx, cc, interval)
		switch {
		case err != nil:
			if refusal(err) {
				slog.Warn("redisbus: Redis refused CLUSTER NODES; this node does not see failovers of other shards, and does not re-send its retirements after them", "err", err)
				return false
			}
		default:
			for id := range watched {
				if !held[id] {
					return true
				}
			}
			// A master that gained slots since (a shard added, or one
			// refilled by a resharding) is watched from now on.
			maps.Copy(watched, held)
		}
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
}

// slotHolders returns the IDs of the masters that hold slots, as the node
// that holds the farm's channel's slot sees them, within timeout.
//
// Like oldVersionListens, it returns as soon as ctx ends; the abandoned
// command ends by its deadline.
func (t *Transport) slotHolders(ctx context.Context, cc *redis.ClusterClient, timeout time.Duration) (map[string]bool, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	type answer struct {
		held map[string]bool
		err  error
	}
	out := make(chan answer, 1)
	go func() {
		defer cancel()
		node, err := cc.MasterForKey(ctx, t.channel)
		if err != nil {
			out <- answer{err: err}
			return
		}
		nodes, err := node.ClusterNodes(ctx).Result()
		if err != nil {
			out <- answer{err: err}
			return
		}
		held := parseSlotHolders(nodes)
		if len(held) == 0 {
			err = errors.New("redisbus: CLUSTER NODES lists no master with slots")
		}
		out <- answer{held, err}
	}()
	select {
	case a := <-out:
		return a.held, a.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// parseSlotHolders returns the IDs of the masters that hold slots in the
// text of CLUSTER NODES: "<id> <addr> <flags> <master> <ping> <pong>
// <epoch> <link> <slot> ...", where a slot is a number or a range; an
// entry in brackets is a slot being imported or migrated.
func parseSlotHolders(nodes string) map[string]bool {
	held := map[string]bool{}
	for _, line := range strings.Split(nodes, "\n") {
		f := strings.Fields(line)
		if len(f) < 9 || !slices.Contains(strings.Split(f[2], ","), "master") {
			continue
		}
		for _, s := range f[8:] {
			if !strings.HasPrefix(s, "[") {
				held[f[0]] = true
				break
			}
		}
	}
	return held
}

// refusal reports whether err is Redis refusing a command: NOPERM, or an
// unknown command.
func refusal(err error) bool {
	var re redis.Error
	if !errors.As(err, &re) {
		return false
	}
	msg := re.Error()
	return strings.HasPrefix(msg, "NOPERM") || strings.Contains(strings.ToLower(msg), "unknown command")
}

// isReply reports whether err is an error reply of Redis, as opposed to a
// failed connection.
func isReply(err error) bool {
	var re redis.Error
	return errors.As(err, &re)
}

// poke sends on c without blocking; c has room for one.
func poke(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// countVersions counts the subscribers of the shared and marker channels
// every VersionCheckInterval and whenever asked on now (at most every
// 100ms), until ctx is done, and sets t.shared to whether the shared
// channel has more: a node of an old version, or some other client, listens
// there, and must hear this node's messages.
func (t *Transport) countVersions(ctx context.Context, now <-chan struct{}) {
	every := t.VersionCheckInterval
	if every <= 0 {
		every = time.Second
	}
	gap := min(every, 100*time.Millisecond)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-now:
		}
		t.shared.Store(t.oldVersionListens(ctx, every))
		select {
		case <-ctx.Done():
			return
		case <-time.After(gap):
		}
	}
}

// oldVersionListens reports whether the farm's shared channel has more
// subscribers than its marker channel, or whether it could not tell.
//
// It returns as soon as ctx ends: go-redis bounds a blocked read by the
// context's deadline but does not end it on cancel, and a count waiting on
// a hung server must not hold up the subscription's end (and so the node's
// Close) for up to timeout. The abandoned command ends by its deadline, or
// at once when the transport closes its client.
func (t *Transport) oldVersionListens(ctx context.Context, timeout time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	old := make(chan bool, 1)
	go func() {
		defer cancel()
		n, err := t.c.PubSubNumSub(ctx, t.channel, t.marker).Result()
		old <- err != nil || n[t.channel] > n[t.marker]
	}()
	select {
	case o := <-old:
		return o
	case <-ctx.Done():
		return true
	}
}

// PutRecords implements transport.RecordStore: SET key value PX ttl, or
// for an Item.IfPresent cutScript, for an Item.NoLonger noLongerScript,
// for an Item.Late lateScript, for an Item.Retire retireScript (DEL if
// it is Item.Taken: the take left the mark, see takeScript), pipelined.
// A script the server refuses while its slot is being migrated
// (TRYAGAIN) is written in steps of one key instead (see splitWrite).
func (t *Transport) PutRecords(ctx context.Context, items ...transport.Item) error {
	if len(items) == 1 {
		it := items[0]
		if it.Retire && it.Taken {
			return t.failed(once{t.c}.Del(ctx, t.RecordKey(it.Key)).Err())
		}
		if sc := writeScript(it); sc != nil {
			err := sc.Run(ctx, once{t.c}, t.scriptKeys(it), scriptArgs(it)...).Err()
			if redis.HasErrorPrefix(err, "TRYAGAIN") {
				err = t.splitWrite(ctx, it)
			}
			return t.failed(err)
		}
		return t.failed(once{t.c}.Set(ctx, t.RecordKey(it.Key), it.Value, it.TTL).Err())
	}
	var cuts []cutCmd
	cmds, err := t.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, it := range items {
			cuts = t.setRecord(ctx, p, it, cuts)
		}
		return nil
	})
	return t.failed(t.redoCuts(ctx, cmds, err, cuts))
}

// A cutCmd is a scripted write (Item.IfPresent, Item.NoLonger,
// Item.Late, Item.Retire) queued in a pipeline (see redoCuts).
type cutCmd struct {
	cmd *redis.Cmd
	it  transport.Item
}

// writeScript returns the script that writes it: cutScript for an
// Item.IfPresent, noLongerScript for an Item.NoLonger, lateScript for an
// Item.Late, retireScript for an Item.Retire, nil for a SET.
func writeScript(it transport.Item) *redis.Script {
	switch {
	case it.Retire:
		return retireScript
	case it.IfPresent:
		return cutScript
	case it.NoLonger:
		return noLongerScript
	case it.Late:
		return lateScript
	}
	return nil
}

// scriptKeys returns the keys of the script that writes it: the record's,
// for a cut its cut mark's and lapsed-cut mark's, for a retirement its
// retirement mark's, and for a late write or a write-back the three
// marks' (all in the record's slot).
func (t *Transport) scriptKeys(it transport.Item) []string {
	k := t.RecordKey(it.Key)
	switch {
	case it.Retire:
		return []string{k, k + retireMarkSuffix}
	case it.IfPresent:
		return []string{k, k + cutMarkSuffix, k + cutLifeSuffix}
	case it.Late || it.NoLonger:
		return []string{k, k + cutMarkSuffix, k + retireMarkSuffix, k + cutLifeSuffix}
	}
	return []string{k}
}

// scriptArgs returns the arguments of the script that writes it: the
// value and the TTL (ms), and for a cut its Life (ms; 0 for none).
func scriptArgs(it transport.Item) []any {
	if it.IfPresent {
		life := int64(0)
		if it.Life > it.TTL {
			life = ttlMillis(it.Life)
		}
		return []any{it.Value, ttlMillis(it.TTL), life}
	}
	return []any{it.Value, ttlMillis(it.TTL)}
}

// setRecord queues the write of it on p: SET, DEL for an Item.Retire
// that is Item.Taken, or for an Item.IfPresent, Item.NoLonger, Item.Late
// or Item.Retire its script by hash, which it appends to cuts.
func (t *Transport) setRecord(ctx context.Context, p redis.Pipeliner, it transport.Item, cuts []cutCmd) []cutCmd {
	if it.Retire && it.Taken {
		// The take left the mark (takeScript), which DEL leaves be.
		once{p}.Del(ctx, t.RecordKey(it.Key))
		return cuts
	}
	if sc := writeScript(it); sc != nil {
		return append(cuts, cutCmd{sc.EvalSha(ctx, once{p}, t.scriptKeys(it), scriptArgs(it)...), it})
	}
	once{p}.Set(ctx, t.RecordKey(it.Key), it.Value, it.TTL)
	return cuts
}

// redoCuts returns the error of a pipeline that ran cmds, err, after
// running again, whole (EVAL), its cuts that the server had no script for
// (NOSCRIPT: it restarted, failed over, or flushed its scripts), and,
// step by step (splitWrite), its scripted writes that the server refused
// while their slot was being migrated (TRYAGAIN): nil if those were its
// only failures and they succeed now. A cut so run after
// the pipeline's deletions and publishes is still right: it writes only
// over a record that is there. A write-back (Item.NoLonger) so run after
// them could write a record the pipeline deleted: the farm never batches
// one with deletions. Nor does it batch a late write (Item.Late) with the
// deletion of its own record: a session retired or revoked since it was
// kept for later is dropped before the batch is written (refreshLater).
func (t *Transport) redoCuts(ctx context.Context, cmds []redis.Cmder, err error, cuts []cutCmd) error {
	if err == nil || len(cuts) == 0 {
		return err
	}
	tryAgain := 0
	for _, c := range cmds {
		switch e := c.Err(); {
		case e == nil || redis.HasErrorPrefix(e, "NOSCRIPT"):
		case redis.HasErrorPrefix(e, "TRYAGAIN"):
			tryAgain++
		default:
			return err
		}
	}
	for _, c := range cuts {
		if redis.HasErrorPrefix(c.cmd.Err(), "TRYAGAIN") {
			tryAgain--
		}
	}
	if tryAgain != 0 {
		return err // a command other than a scripted write
	}
	_, err = t.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, c := range cuts {
			if e := c.cmd.Err(); e != nil && !redis.HasErrorPrefix(e, "TRYAGAIN") {
				writeScript(c.it).Eval(ctx, once{p}, t.scriptKeys(c.it), scriptArgs(c.it)...)
			}
		}
		return nil
	})
	for _, c := range cuts {
		if err == nil && redis.HasErrorPrefix(c.cmd.Err(), "TRYAGAIN") {
			err = t.splitWrite(ctx, c.it)
		}
	}
	return err
}

// splitWrite is the scripted write of it (see writeScript) while its
// slot is being migrated and its keys, the record and its marks, are
// split between two nodes (TRYAGAIN: Redis runs no command over two keys
// of such a slot, and none over two keys that are all missing on the
// node importing it): the same write in steps of one key each, following
// ASK (retireSplit, cutSplit, noLongerSplit, lateSplit). Each step is
// atomic; the write as a whole is not, and each says what a peer's write
// that lands between its steps does. Only a write the server refused
// pays for it: the common path stays one script.
func (t *Transport) splitWrite(ctx context.Context, it transport.Item) error {
	switch {
	case it.Retire:
		return t.retireSplit(ctx, it)
	case it.IfPresent:
		return t.cutSplit(ctx, it)
	case it.NoLonger:
		return t.noLongerSplit(ctx, it)
	}
	return t.lateSplit(ctx, it)
}

// lateSplit is the late write of it (lateScript) split (see splitWrite):
// the marks read by splitMarks, then the SET. It writes what lateScript
// writes, but not atomically: a mark left between the reads and the SET
// is missed, as a plain write misses it, until the writer hears of the
// cut or retirement and writes it again. The farm's first writes in
// broadcast mode are late writes (see transport.Item.Late): without it,
// each new session of a migrating slot would fail its write until the
// slot moved.
func (t *Transport) lateSplit(ctx context.Context, it transport.Item) error {
	k := t.RecordKey(it.Key)
	value, ttl, skip, err := t.splitMarks(ctx, k, it)
	if err != nil || skip {
		return err
	}
	return once{t.c}.Set(ctx, k, value, ttl).Err()
}

// splitMarks reads the marks of the record k, each on its own, for the
// write of it, as lateScript does: the retirement mark's EXISTS, the cut
// mark's PTTL and GET (or, where it lapsed, the lapsed-cut mark's
// EXISTS). It returns skip if the write is to write nothing (a retirement
// mark, or a lapsed-cut mark without its cut mark), and else the value
// and TTL to write: the cut mark's value and what is left of it if one is
// there that ends sooner than it.TTL, or else its own. It reads them on
// the masters (see master), following ASK.
func (t *Transport) splitMarks(ctx context.Context, k string, it transport.Item) (value []byte, ttl time.Duration, skip bool, err error) {
	gone, err := t.master().Exists(ctx, k+retireMarkSuffix).Result()
	if err != nil || gone > 0 {
		return nil, 0, true, err
	}
	left, err := t.master().PTTL(ctx, k+cutMarkSuffix).Result()
	if err != nil {
		return nil, 0, true, err
	}
	if left <= 0 {
		lapsed, err := t.master().Exists(ctx, k+cutLifeSuffix).Result()
		return it.Value, it.TTL, err != nil || lapsed > 0, err
	}
	if left < it.TTL {
		v, err := t.master().Get(ctx, k+cutMarkSuffix).Bytes()
		switch {
		case err == nil:
			return v, left, false, nil
		case !errors.Is(err, redis.Nil):
			return nil, 0, true, err
		}
	}
	return it.Value, it.TTL, false, nil
}

// noLongerSplit is the write-back of it (noLongerScript) split (see
// splitWrite): shortenScript on the record alone, which writes over a
// record that would outlive the new TTL (or has none) and leaves one
// that lapses sooner, atomically; where it finds no record, the marks
// read by splitMarks, then SET NX. A peer's record written between the
// reads and the SET stays (the write-back writes nothing over it, even
// one it would have shortened); a mark left in between is missed, as a
// plain write misses it: the peer that left it wrote a cut or retirement
// this node missed, which the next heal brings again.
func (t *Transport) noLongerSplit(ctx context.Context, it transport.Item) error {
	k := t.RecordKey(it.Key)
	n, err := shortenScript.Run(ctx, once{t.c}, []string{k}, it.Value, ttlMillis(it.TTL)).Int()
	if err != nil || n >= 0 {
		return err
	}
	value, ttl, skip, err := t.splitMarks(ctx, k, it)
	if err != nil || skip {
		return err
	}
	return once{t.c}.SetNX(ctx, k, value, ttl).Err()
}

// cutSplit is the cut of it (cutScript) split (see splitWrite):
// shortenScript on the record alone, which shortens a record that would
// outlive the cut (or has none) and leaves one that lapses sooner,
// atomically; where it finds no record, the cut mark's PTTL and SET
// (unless one that ends sooner is there); then, with a Life, the
// lapsed-cut mark's SET NX, or PEXPIRE GT where one is there (a mark
// that ends later stays). A late write that lands between the record's
// step and the cut mark's writes the session whole, which the cut then
// misses, as before cut marks, until its writer hears of the cut; the
// lapsed-cut mark comes one round trip after the cut, and a late write
// that lands in between, once the cut lapsed, is written.
func (t *Transport) cutSplit(ctx context.Context, it transport.Item) error {
	k := t.RecordKey(it.Key)
	n, err := shortenScript.Run(ctx, once{t.c}, []string{k}, it.Value, ttlMillis(it.TTL)).Int()
	switch {
	case err != nil || n == 0:
		return err // a record that lapses sooner: cutScript leaves no lapsed-cut mark either
	case n < 0:
		mark, err := t.master().PTTL(ctx, k+cutMarkSuffix).Result()
		if err != nil {
			return err
		}
		if mark == -2 || mark > it.TTL {
			o := once{t.c}
			if err := o.Set(ctx, k+cutMarkSuffix, it.Value, it.TTL).Err(); err != nil {
				return err
			}
		}
	}
	if it.Life <= it.TTL {
		return nil // no lapsed-cut mark (see scriptArgs)
	}
	o := once{t.c}
	set, err := o.SetNX(ctx, k+cutLifeSuffix, []byte{'1'}, it.Life).Result()
	if err == nil && !set {
		err = o.PExpireGT(ctx, k+cutLifeSuffix, it.Life).Err()
	}
	return err
}

// retireSplit is the retirement of it (retireScript) split (see
// splitWrite): the retirement mark first, SET NX, or PEXPIRE GT where one
// is there (a mark that ends later stays), then the record's DEL. Unlike
// retireScript, it leaves the mark whether or not it finds the record: a
// late write that lands between the two steps then writes nothing, where
// the other order would let one land between a DEL that found nothing
// and the mark, and put the session back. The mark costs one SET more
// only while the slot moves.
func (t *Transport) retireSplit(ctx context.Context, it transport.Item) error {
	k := t.RecordKey(it.Key)
	o := once{t.c}
	set, err := o.SetNX(ctx, k+retireMarkSuffix, []byte{'1'}, it.TTL).Result()
	if err == nil && !set {
		err = o.PExpireGT(ctx, k+retireMarkSuffix, it.TTL).Err()
	}
	if err != nil {
		return err
	}
	return o.Del(ctx, k).Err()
}

// shortenScript is the step on the record alone of a cut or write-back
// split (cutSplit, noLongerSplit): KEYS[1] is the record, ARGV the value
// and the TTL (ms). Where no record is, it writes nothing and returns -1;
// where one is that lapses no later than the TTL, it writes nothing and
// returns 0; else it writes the value, as SET does, and returns 1. One
// key: Redis runs it while the slot moves, on the node that has the
// record or, following ASK, on the node importing it.
var shortenScript = redis.NewScript(`
local left = redis.call('PTTL', KEYS[1])
if left == -2 then return -1 end
if left >= 0 and left <= tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
`)

// cutScript is the write of an Item.IfPresent: KEYS[1] is the record,
// KEYS[2] its cut mark, KEYS[3] its lapsed-cut mark, ARGV the value, the
// TTL (ms) and the Item.Life (ms, 0 for none). It writes only
// over a record that is there and would outlive the new TTL (or has
// none): a cut shortens a record, never brings back one that is gone nor
// lengthens one that a peer's cut ended sooner. It returns 1 if it wrote.
// Finding no record, it leaves the cut as the record's cut mark, for its
// TTL, unless a mark that ends sooner is there: a late write of the
// session (lateScript) then writes the cut, not the whole record its
// writer read before it heard of the cut. With a Life, it leaves the
// lapsed-cut mark too, for the Life (a mark that ends later stays),
// whether or not it found the record: a late write that lands once the
// cut lapsed writes nothing, where it would put the session back whole
// past its grace, and one that lands while the record it shortened
// lasts leaves that record be (see lateScript). Only a cut that finds
// no record pays for the cut mark; the cut that finds one, for the
// lapsed-cut mark's PTTL and SET.
var cutScript = redis.NewScript(`
local left = redis.call('PTTL', KEYS[1])
local wrote = 0
if left == -2 then
	local mark = redis.call('PTTL', KEYS[2])
	if mark == -2 or mark > tonumber(ARGV[2]) then
		redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
	end
elseif left >= 0 and left <= tonumber(ARGV[2]) then
	return 0
else
	redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
	wrote = 1
end
local life = tonumber(ARGV[3])
if life > 0 then
	local lapse = redis.call('PTTL', KEYS[3])
	if lapse ~= -1 and lapse < life then
		redis.call('SET', KEYS[3], '1', 'PX', life)
	end
end
return wrote
`)

// marksLua is the Lua of lateScript and noLongerScript that honours the
// marks of a record (KEYS as lateScript's, ARGV[2] the new TTL in ms): it
// returns 0 if a retirement mark is there, or a lapsed-cut mark without
// a cut mark; writes a cut mark's value for what is left of it and
// returns 2 if the mark ends sooner than the new TTL; and else goes on
// to what follows it.
const marksLua = `
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local mark = redis.call('PTTL', KEYS[2])
if mark > 0 then
	if mark < tonumber(ARGV[2]) then
		local v = redis.call('GET', KEYS[2])
		if v then
			redis.call('SET', KEYS[1], v, 'PX', mark)
			return 2
		end
	end
elseif redis.call('EXISTS', KEYS[4]) == 1 then
	return 0
end`

// lateScript is the write of an Item.Late: KEYS[1] is the record, KEYS[2]
// its cut mark, KEYS[3] its retirement mark, KEYS[4] its lapsed-cut mark,
// ARGV the value and the TTL (ms). If a retirement mark is there (a
// peer's retirement that found no record: see retireScript), it writes
// nothing and returns 0. If a cut mark is there that ends sooner than the
// new TTL, it writes the mark's value for what is left of it (a peer's
// cut that found no record: see cutScript), and returns 2. If no cut mark
// is there but a lapsed-cut mark is (the cut's grace is over, or the cut
// found the record and shortened it: the record is the cut), it writes
// nothing and returns 0. Else it writes the value, as SET does, and
// returns 1. The marks are looked at one by one only where one of them is
// there: a session's first write, the common case, finds none, and reads
// them in one EXISTS (as noLongerScript does).
var lateScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[2], KEYS[3], KEYS[4]) > 0 then` + marksLua + `
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
`)

// retireScript is the write of an Item.Retire: KEYS[1] is the record,
// KEYS[2] its retirement mark, ARGV[2] the mark's TTL (ms; ARGV[1] is
// unused). It deletes the record and returns 1; finding none, it leaves
// the mark, for its TTL (a mark that ends later stays), and returns 0: a
// late write of the session (lateScript) then writes nothing. Only a
// retirement that finds no record pays for the mark.
var retireScript = redis.NewScript(`
if redis.call('DEL', KEYS[1]) == 1 then return 1 end
local left = redis.call('PTTL', KEYS[2])
if left ~= -1 and left < tonumber(ARGV[2]) then
	redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
end
return 0
`)

// noLongerScript is the write of an Item.NoLonger: KEYS as lateScript's,
// ARGV the value and the TTL (ms). It writes over a record that would
// outlive the new TTL (or has none), and leaves one that lapses sooner: a
// write-back never lengthens a record that a peer, knowing a cut this
// node missed, wrote back cut. Where no record is, it honours the marks
// as lateScript does: a retirement mark, or a lapsed-cut mark without
// its cut mark, and it writes nothing (a peer retired or cut the session
// in the emptied store, in a message this node missed); a cut mark that
// ends sooner, and it writes the mark's value for what is left of it and
// returns 2. It returns 1 if it wrote the value, 0 if nothing. The marks
// are looked at one by one only where one of them is there: a store that
// lost its data has none, and a write-back into it reads them in one
// EXISTS a key.
var noLongerScript = redis.NewScript(`
local left = redis.call('PTTL', KEYS[1])
if left >= 0 and left <= tonumber(ARGV[2]) then return 0 end
if left == -2 and redis.call('EXISTS', KEYS[2], KEYS[3], KEYS[4]) > 0 then` + marksLua + `
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
`)

// ttlMillis returns ttl in whole milliseconds, at least 1.
func ttlMillis(ttl time.Duration) int64 {
	return max(ttl.Milliseconds(), 1)
}

// PutAndPublish implements transport.Batcher: the SETs (and cuts), the
// DELs and the PUBLISHes go in one pipeline, one round trip (on a cluster,
// one per shard, with a DEL per key; a second for cuts, see redoCuts, if
// the server lost its scripts).
func (t *Transport) PutAndPublish(ctx context.Context, items []transport.Item, dels []string, msgs [][]byte) error {
	var cuts []cutCmd
	cmds, err := t.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, it := range items {
			cuts = t.setRecord(ctx, p, it, cuts)
		}
		switch {
		case len(dels) == 0:
		case t.cluster:
			for _, k := range dels {
				once{p}.Del(ctx, t.RecordKey(k))
			}
		default:
			full := make([]string, len(dels))
			for i, k := range dels {
				full[i] = t.RecordKey(k)
			}
			once{p}.Del(ctx, full...)
		}
		for _, m := range msgs {
			t.publish(ctx, once{p}, m)
		}
		return nil
	})
	return t.failed(t.redoCuts(ctx, cmds, err, cuts))
}

// MayPublishFirst implements transport.UnorderedBatcher: on a cluster,
// PutAndPublish sends each shard its commands at once, so a peer may hear
// a message from the channel's shard before a record it names is written
// on its own shard. On one server, a pipeline runs in order.
func (t *Transport) MayPublishFirst() bool { return t.cluster }

// GetRecord implements transport.RecordStore.
func (t *Transport) GetRecord(ctx context.Context, key string) ([]byte, error) {
	return t.get(ctx, t.RecordKey(key))
}

// GetRecords implements transport.RecordGetter: one MGET, or on a cluster,
// where the records lie in different slots, one GET per key, pipelined
// (one round trip per shard).
func (t *Transport) GetRecords(ctx context.Context, keys ...string) ([][]byte, error) {
	out := make([][]byte, len(keys))
	if len(keys) == 0 {
		return out, nil
	}
	if !t.cluster {
		full := make([]string, len(keys))
		for i, k := range keys {
			full[i] = t.RecordKey(k)
		}
		vals, err := t.c.MGet(ctx, full...).Result()
		if err != nil {
			return nil, t.failed(err)
		}
		for i, v := range vals {
			if s, ok := v.(string); ok && i < len(out) {
				out[i] = []byte(s)
			}
		}
		return out, nil
	}
	cmds := make([]*redis.StringCmd, len(keys))
	_, err := t.reader(ctx).Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range keys {
			cmds[i] = p.Get(ctx, t.RecordKey(k))
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, t.failed(err)
	}
	for i, c := range cmds {
		b, err := c.Bytes()
		switch {
		case errors.Is(err, redis.Nil):
		case err != nil:
			return nil, t.failed(err)
		default:
			out[i] = b
		}
	}
	return out, nil
}

// Get implements transport.Coordinator.
func (t *Transport) Get(ctx context.Context, key string) ([]byte, error) {
	return t.get(ctx, t.prefix+key)
}

func (t *Transport) get(ctx context.Context, key string) ([]byte, error) {
	b, err := t.reader(ctx).Get(ctx, key).Bytes()
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
		return t.failed(once{t.c}.Del(ctx, full...).Err())
	}
	_, err := t.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			once{p}.Del(ctx, t.RecordKey(k))
		}
		return nil
	})
	return t.failed(err)
}

// TakeRecord implements transport.RecordTaker with takeScript: one atomic
// step that reads and deletes the record and leaves its retirement mark
// for the record's remaining life (a late write of the taken session then
// writes nothing). With WaitReplicas set, a WAIT follows it in the same
// pipeline, and a record taken but not acknowledged by enough replicas is
// an error (ErrNotReplicated), never a value.
func (t *Transport) TakeRecord(ctx context.Context, key string) ([]byte, error) {
	mark := t.RetireMarkKey(key) // the record's key is its prefix: one string for both
	if t.WaitReplicas > 0 {
		return t.takeWait(ctx, mark)
	}
	cmd := once{t.c}.Take(ctx, mark, false)
	if redis.HasErrorPrefix(cmd.Err(), "NOSCRIPT") {
		// Not run: the server has no script (it restarted, failed
		// over, or flushed its scripts).
		cmd = once{t.c}.Take(ctx, mark, true)
	}
	if redis.HasErrorPrefix(cmd.Err(), "TRYAGAIN") {
		return t.takeSplit(ctx, mark, false)
	}
	b, err := cmd.Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, transport.ErrNotFound
	}
	return b, t.failed(err)
}

// takeSplit is the take of the record whose retirement mark is mark (the
// record's key and retireMarkSuffix) while its slot is being migrated and
// the record and its mark are split between two nodes (TRYAGAIN: Redis
// runs no command over keys of a slot so split): the record's PTTL,
// GETDEL (with WAIT if wait), then its retirement mark (SET NX, or
// PEXPIRE GT where one is there: as takeScript, a mark that ends later
// stays so), each on its own, following ASK (the PTTL on the master: see
// master). The take stays atomic; the mark comes one round trip after it
// (a late write that lands in between puts the record back, as before
// marks), and a failure to write it is not the take's: the record is
// taken either way.
func (t *Transport) takeSplit(ctx context.Context, mark string, wait bool) ([]byte, error) {
	full := mark[:len(mark)-len(retireMarkSuffix)]
	left, err := t.master().PTTL(ctx, full).Result()
	if err != nil {
		return nil, t.failed(err)
	}
	var b []byte
	if wait {
		var get *redis.StringCmd
		ack, err := t.waitAfter(ctx, full, func(p redis.Pipeliner) { get = once{p}.GetDel(ctx, full) })
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, t.failed(err)
		}
		if b, err = get.Bytes(); err == nil {
			err = t.acknowledged(ack)
		}
		if err != nil {
			return t.taken(err)
		}
	} else {
		g := once{t.c}.GetDel(ctx, full)
		if b, err = g.Bytes(); err != nil {
			return t.taken(err)
		}
	}
	if left > 0 {
		o := once{t.c}
		if set, err := o.SetNX(ctx, mark, []byte{'1'}, left).Result(); err == nil && !set {
			_ = o.PExpireGT(ctx, mark, left).Err()
		}
	}
	return b, nil
}

// taken returns what a take that failed with err returns: ErrNotFound for
// redis.Nil, an ErrNotReplicated as it is, else the error, counted.
func (t *Transport) taken(err error) ([]byte, error) {
	switch {
	case errors.Is(err, redis.Nil):
		return nil, transport.ErrNotFound
	case errors.Is(err, ErrNotReplicated):
		return nil, err
	case err != nil:
		return nil, t.failed(err)
	}
	return nil, nil
}

// takeScript is the take of a record (TakeRecord): KEYS[1] is the record,
// KEYS[2] its retirement mark. It returns the record's value and deletes
// it, or returns nil where there is none. A record it takes leaves its
// retirement mark for the record's remaining life (a mark that ends later
// stays), as a retirement that finds no record does (retireScript): the
// writer of a single-use session whose first write was reported failed
// but landed writes it again as a late write (lateScript), which then
// writes nothing, where it would put the session back for a second taker
// until the writer hears of the take and deletes it again.
var takeScript = redis.NewScript(takeSource)

const takeSource = `
local left = redis.call('PTTL', KEYS[1])
if left == -2 then return false end
local v = redis.call('GETDEL', KEYS[1])
if left > 0 then
	local mark = redis.call('PTTL', KEYS[2])
	if mark ~= -1 and mark < left then
		redis.call('SET', KEYS[2], '1', 'PX', left)
	end
end
return v
`

// AddRecord implements transport.RecordTaker: SET key value NX PX ttl.
// With WaitReplicas set, a WAIT follows it in the same pipeline, and a
// record added but not acknowledged by enough replicas is an error
// (ErrNotReplicated) with false.
func (t *Transport) AddRecord(ctx context.Context, it transport.Item) (bool, error) {
	if t.WaitReplicas > 0 {
		return t.addWait(ctx, t.RecordKey(it.Key), it)
	}
	ok, err := once{t.c}.SetNX(ctx, t.RecordKey(it.Key), it.Value, it.TTL).Result()
	return ok, t.failed(err)
}

// takeWait is TakeRecord with WAIT: takeScript and WAIT in one pipeline, on
// the master that holds the record whose retirement mark is mark.
func (t *Transport) takeWait(ctx context.Context, mark string) ([]byte, error) {
	var get *redis.StringCmd
	eval := false
	wait, err := t.waitAfter(ctx, mark, func(p redis.Pipeliner) { get = once{p}.Take(ctx, mark, eval) })
	if err != nil && redis.HasErrorPrefix(get.Err(), "NOSCRIPT") {
		// Not run (see TakeRecord): the pipeline again, with the source.
		eval = true
		wait, err = t.waitAfter(ctx, mark, func(p redis.Pipeliner) { get = once{p}.Take(ctx, mark, eval) })
	}
	if err != nil && redis.HasErrorPrefix(get.Err(), "TRYAGAIN") {
		return t.takeSplit(ctx, mark, true)
	}
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, t.failed(err)
	}
	b, err := get.Bytes()
	switch {
	case errors.Is(err, redis.Nil):
		return nil, transport.ErrNotFound // nothing taken: nothing to lose
	case err != nil:
		return nil, t.failed(err)
	}
	if err := t.acknowledged(wait); err != nil {
		return nil, err
	}
	return b, nil
}

// addWait is AddRecord with WAIT: SET NX and WAIT in one pipeline, on the
// master that holds full.
func (t *Transport) addWait(ctx context.Context, full string, it transport.Item) (bool, error) {
	var set *redis.BoolCmd
	wait, err := t.waitAfter(ctx, full, func(p redis.Pipeliner) { set = once{p}.SetNX(ctx, full, it.Value, it.TTL) })
	if err != nil {
		return false, t.failed(err)
	}
	if !set.Val() {
		return false, nil // nothing added: nothing to lose
	}
	if err := t.acknowledged(wait); err != nil {
		return false, err
	}
	return true, nil
}

// waitAfter runs cmd, then WAIT WaitReplicas WaitTimeout, in one
// pipeline on the connection to the master of key (on a cluster, the
// master of key's slot: WAIT names no key, and would go to any master).
// On a cluster, a cmd answered MOVED or ASK (a slot moved since the
// client's map was read, or being migrated) was run nowhere: it is run,
// with its WAIT, once more on the master Redis names (after ASKING, for
// an ASK), as the cluster client does for a command of its own.
func (t *Transport) waitAfter(ctx context.Context, key string, cmd func(redis.Pipeliner)) (*redis.Cmd, error) {
	timeout := t.WaitTimeout
	if timeout <= 0 {
		timeout = DefaultWaitTimeout
	}
	timeout = max(timeout, time.Millisecond).Round(time.Millisecond)
	run := func(c redis.Cmdable, asking bool) (*redis.Cmd, error) {
		var wait *redis.Cmd
		_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
			if asking {
				p.Do(ctx, "asking")
			}
			cmd(p)
			wait = p.Do(ctx, "wait", t.WaitReplicas, timeout.Milliseconds())
			return nil
		})
		return wait, err
	}
	cc, ok := t.c.(*redis.ClusterClient)
	if !ok {
		return run(t.c, false)
	}
	m, err := cc.MasterForKey(ctx, key)
	if err != nil {
		return nil, err
	}
	wait, err := run(m, false)
	addr, moved := redis.IsMovedError(err)
	if !moved {
		if addr, asked := redis.IsAskError(err); asked {
			if m := masterAt(ctx, cc, addr); m != nil {
				return run(m, true)
			}
			return wait, err
		}
		return wait, err
	}
	cc.ReloadState(ctx)
	if m := masterAt(ctx, cc, addr); m != nil {
		return run(m, false)
	}
	return wait, err
}

// masterAt returns the client of the cluster's master at addr, or nil.
func masterAt(ctx context.Context, cc *redis.ClusterClient, addr string) *redis.Client {
	var mu sync.Mutex
	var found *redis.Client
	cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		if c.Options().Addr == addr {
			mu.Lock()
			found = c
			mu.Unlock()
		}
		return nil
	})
	return found
}

// acknowledged returns nil if WAIT counted WaitReplicas replicas or more,
// and ErrNotReplicated, wrapped with the counts, if not.
func (t *Transport) acknowledged(wait *redis.Cmd) error {
	n, err := wait.Int64()
	if err != nil {
		return fmt.Errorf("%w: WAIT: %v", ErrNotReplicated, err)
	}
	if n < int64(t.WaitReplicas) {
		return fmt.Errorf("%w (%d of %d)", ErrNotReplicated, n, t.WaitReplicas)
	}
	return nil
}

// SwapRecord implements transport.RecordSwapper: SET key value PX ttl GET, one
// atomic command (Redis 6.2 or later).
func (t *Transport) SwapRecord(ctx context.Context, it transport.Item) ([]byte, error) {
	b, err := once{t.c}.SetGet(ctx, t.RecordKey(it.Key), it.Value, it.TTL).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, transport.ErrNotFound
	}
	return b, t.failed(err)
}

// strikeSource is StrikeRecord's script: KEYS[1] is the group's marker,
// KEYS[2] the strike; ARGV: since (Unix ms), the value, the TTL (ms), the
// marker's TTL (ms), "1" if there is a strike to write, and "1" to renew
// the register instead (RenewRegister): then every key is a marker, each
// written with the server's clock (unless it is a finite time later than
// that), and nothing is struck. A marker that is missing or not a finite
// number is written with the server's clock (tonumber takes "nan" and
// "inf", and a NaN is after no time: it would refuse nothing).
const strikeSource = `
if ARGV[6] == '1' then
  local now = redis.call('TIME')
  local ms = now[1] .. string.format('%03d', math.floor(tonumber(now[2]) / 1000))
  for i = 1, #KEYS do
    local begun = tonumber(redis.call('GET', KEYS[i]) or '')
    if not (begun and begun == begun and begun ~= math.huge and begun > tonumber(ms)) then
      redis.call('SET', KEYS[i], ms, 'PX', ARGV[4])
    end
  end
  return 0
end
local begun = tonumber(redis.call('GET', KEYS[1]) or '')
if begun and (begun ~= begun or begun == math.huge or begun == -math.huge) then
  begun = nil
end
if not begun then
  local now = redis.call('TIME')
  local ms = now[1] .. string.format('%03d', math.floor(tonumber(now[2]) / 1000))
  redis.call('SET', KEYS[1], ms, 'PX', ARGV[4])
  begun = tonumber(ms)
elseif redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) / 2 then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
if ARGV[5] ~= '1' then return 0 end
if begun > tonumber(ARGV[1]) then return -1 end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then return 1 end
return 0
`

// strikeScript returns the strike script of the group whose marker is
// marker: strikeSource under a first line naming this farm's register
// (see StrikeRecord), and, in a cluster, the group too.
func (t *Transport) strikeScript(marker string) *redis.Script {
	if !t.cluster {
		return t.strike
	}
	if s, ok := t.strikes.Load(marker); ok {
		return s.(*redis.Script)
	}
	s, _ := t.strikes.LoadOrStore(marker, newStrikeScript(marker))
	return s.(*redis.Script)
}

// newStrikeScript returns strikeSource under a first line naming name.
func newStrikeScript(name string) *redis.Script {
	return redis.NewScript("-- tlsfarm strike register " + hex.EncodeToString([]byte(name)) + strikeSource)
}

// isNoScript reports whether err is Redis's answer to EVALSHA of a script
// it does not hold.
func isNoScript(err error) bool {
	return err != nil && (errors.Is(err, redis.ErrNoScript) || redis.HasErrorPrefix(err, "NOSCRIPT"))
}

// StrikeRecord implements transport.Striker with a Lua script, one round
// trip. The group's marker is "tlsfarm:<farm>:{<group>}", holding the Unix
// time in milliseconds (by the server's clock) at which the group's
// register began; its records are "tlsfarm:<farm>:{<group>}:<key>", in the
// marker's slot.
//
// A server can lose strikes and keep the markers: one that restarts from
// persisted data older than its last writes (an RDB snapshot, an AOF not
// synced at every write, a restore from backup) has the old markers back
// and not the strikes made since. Its script cache, though, is never
// persisted. The farm's strike script (each group's, in a cluster) runs
// by EVALSHA only, and gets into a server's cache only by RenewRegister,
// in the same atomic step that makes the registers it covers begin anew.
// So the script in the cache means the markers were renewed since the
// server last lost its scripts; a server without it answers NOSCRIPT, and
// StrikeRecord returns transport.ErrRegisterUnknown.
//
// While a group's slot is being migrated, a strike whose keys are not all
// on one node is refused by the server (TRYAGAIN), and StrikeRecord
// returns that error, fresh false. Unlike the record writes (see
// splitWrite), it has no stepwise fallback: the marker's check and the
// strike's SET NX hold only as one step on a server known to hold the
// script, and Redis answers TRYAGAIN before it looks for the script, so a
// node reached in steps might have lost its strikes. A refused strike
// refuses the ticket's early data; the client resumes in 1-RTT.
func (t *Transport) StrikeRecord(ctx context.Context, group string, it transport.Item, since time.Time, markerTTL time.Duration) (bool, error) {
	marker := t.RecordKey(group)
	write := "0"
	if it.Key != "" {
		write = "1"
	}
	keys := []string{marker, marker + ":" + it.Key}
	args := []any{since.UnixMilli(), it.Value, max(it.TTL.Milliseconds(), 1), max(markerTTL.Milliseconds(), 1), write, "0"}
	sc := t.strikeScript(marker)
	if t.WaitReplicas > 0 && write == "1" {
		return t.strikeWait(ctx, sc, keys, args)
	}
	n, err := sc.EvalSha(ctx, once{t.c}, keys, args...).Int()
	if isNoScript(err) {
		return false, transport.ErrRegisterUnknown
	}
	if err != nil {
		return false, t.failed(err)
	}
	if n < 0 {
		return false, transport.ErrRegisterNewer
	}
	return n == 1, nil
}

// RenewRegister implements transport.RegisterRenewer: the strike script
// (see StrikeRecord), sent whole, renews the markers of groups, so that the
// server holds the script from then on. One command for every group on a
// single server; in a cluster, one for each group (each has a script of
// its own: a script's keys must lie in one slot), in one pipeline.
func (t *Transport) RenewRegister(ctx context.Context, groups []string, markerTTL time.Duration) error {
	args := []any{0, "", 1, max(markerTTL.Milliseconds(), 1), "0", "1"}
	if !t.cluster {
		markers := make([]string, len(groups))
		for i, g := range groups {
			markers[i] = t.RecordKey(g)
		}
		return t.failed(t.strikeScript("").Eval(ctx, once{t.c}, markers, args...).Err())
	}
	_, err := t.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, g := range groups {
			m := t.RecordKey(g)
			t.strikeScript(m).Eval(ctx, once{p}, []string{m}, args...)
		}
		return nil
	})
	return t.failed(err)
}

// PrimeRegister implements transport.RegisterPrimer: StrikeRecord's script
// by EVALSHA (see StrikeRecord), with nothing to strike, for every group in
// one pipeline: one round trip (per master, in a cluster), where a
// StrikeRecord for each group took one each.
func (t *Transport) PrimeRegister(ctx context.Context, groups []string, markerTTL time.Duration) error {
	args := []any{0, "", 1, max(markerTTL.Milliseconds(), 1), "0", "0"}
	cmds := make([]*redis.Cmd, 0, len(groups))
	_, err := t.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, g := range groups {
			m := t.RecordKey(g)
			cmds = append(cmds, t.strikeScript(m).EvalSha(ctx, once{p}, []string{m, m + ":"}, args...))
		}
		return nil
	})
	for _, c := range cmds {
		if isNoScript(c.Err()) {
			return transport.ErrRegisterUnknown
		}
	}
	return t.failed(err)
}

// strikeWait is StrikeRecord with WAIT: the script (by EVALSHA, see
// StrikeRecord) and WAIT in one pipeline, on the master of the strike's
// slot. A strike written but not
// acknowledged by enough replicas is an error (ErrNotReplicated) with false.
func (t *Transport) strikeWait(ctx context.Context, sc *redis.Script, keys []string, args []any) (bool, error) {
	var run *redis.Cmd
	wait, err := t.waitAfter(ctx, keys[1], func(p redis.Pipeliner) { run = sc.EvalSha(ctx, once{p}, keys, args...) })
	if isNoScript(err) {
		return false, transport.ErrRegisterUnknown
	}
	if err != nil {
		return false, t.failed(err)
	}
	n, err := run.Int()
	switch {
	case err != nil:
		return false, t.failed(err)
	case n < 0:
		return false, transport.ErrRegisterNewer
	case n == 0:
		return false, nil // nothing written: nothing to lose
	}
	if err := t.acknowledged(wait); err != nil {
		return false, err
	}
	return true, nil
}

// SetNX implements transport.Coordinator: SET key value NX PX ttl.
func (t *Transport) SetNX(ctx context.Context, key string, value []byte, ttl time.Duration) (bool, error) {
	ok, err := once{t.c}.SetNX(ctx, t.prefix+key, value, ttl).Result()
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
	n, err := casScript.Run(ctx, once{t.c}, []string{t.prefix + key}, mode, old, new, ttl.Milliseconds()).Int()
	return n == 1, t.failed(err)
}

// setAddScript adds a member scored by its expiry, replaces the set's
// version (KEYS[2]) with a new random one (ARGV[3]), and keeps the TTL of
// both at the set's latest member's.
var setAddScript = redis.NewScript(`
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], last[2])
redis.call('SET', KEYS[2], ARGV[3])
redis.call('PEXPIREAT', KEYS[2], last[2])
return 1
`)

// setVersionKey returns the Redis key of the version of the set at key
// (see SetVersion): beside the set, under the farm's hash tag.
func (t *Transport) setVersionKey(key string) string { return t.prefix + key + ":version" }

// SetAdd implements transport.Coordinator with a sorted set scored by
// expiry. The same script replaces the set's version (see SetVersion).
// With WaitReplicas set, a WAIT follows it in the same pipeline, and a
// member added but not acknowledged by enough replicas is an error
// (ErrNotReplicated): the farm's sets are its revocation tombstones, a
// promise as single use is, and one that a failover lost would let a node
// that joins afterwards resume a revoked session. The farm then keeps the
// revocation and adds it again, to whichever master holds the set by then.
// While the farm's slot is being migrated, an add the server refuses for
// it (TRYAGAIN) is written in two steps, the member and then the version
// (see setAddSplit), which transport.SetVersioner allows.
func (t *Transport) SetAdd(ctx context.Context, key string, member []byte, until time.Time) error {
	var v [16]byte
	rand.Read(v[:])
	keys := []string{t.prefix + key, t.setVersionKey(key)}
	args := []any{until.UnixMilli(), member, v[:]}
	if t.WaitReplicas <= 0 {
		err := setAddScript.Run(ctx, once{t.c}, keys, args...).Err()
		if redis.HasErrorPrefix(err, "TRYAGAIN") {
			return t.failed(t.setAddSplit(ctx, keys, args))
		}
		return t.failed(err)
	}
	// Sent whole (EVAL), not by hash: a revocation is rare, and a
	// pipeline has no second try for NOSCRIPT.
	var add *redis.Cmd
	wait, err := t.waitAfter(ctx, keys[0], func(p redis.Pipeliner) { add = setAddScript.Eval(ctx, once{p}, keys, args...) })
	if add != nil && redis.HasErrorPrefix(add.Err(), "TRYAGAIN") {
		return t.failed(t.setAddSplit(ctx, keys, args))
	}
	if err != nil {
		return t.failed(err)
	}
	if err := add.Err(); err != nil {
		return t.failed(err)
	}
	return t.acknowledged(wait)
}

// setAddMemberScript is the step on the set alone of a SetAdd split (see
// setAddSplit): setAddScript without the version. It returns the time
// (Unix ms) at which the set now lapses, its latest member's.
var setAddMemberScript = redis.NewScript(`
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], last[2])
return last[2]
`)

// setVersionScript is the step on the version alone of a SetAdd split
// (see setAddSplit): it writes the version ARGV[1], to lapse at ARGV[2]
// (Unix ms) or, if the version it replaces lapses later, then: a peer's
// split add whose member lapses later may have written its version
// first, and the version must last as long as the set.
var setVersionScript = redis.NewScript(`
local at = tonumber(ARGV[2])
local left = redis.call('PTTL', KEYS[1])
if left > 0 then
  local now = redis.call('TIME')
  local old = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + left
  if old > at then at = old end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PEXPIREAT', KEYS[1], at)
return 1
`)

// setAddSplit is SetAdd's script (setAddScript) while the farm's slot is
// being migrated and the set and its version are split between two nodes,
// or neither is on the node that is giving the slot up (TRYAGAIN: Redis
// runs no command over two keys of such a slot that it cannot find all in
// one place): the same write in two steps of one key each, following ASK,
// each atomic and, with WaitReplicas, each followed by its own WAIT on the
// node that ran it. The member first, then the version, so a reader that
// sees the new version reads the new member too. What is lost is the
// single step: between the two a reader may see the member under the old
// version (a reader that caches by version then misses it until the next
// version), and if the second step fails SetAdd fails with the member
// written and the old version left; the farm adds the revocation again,
// which writes a new version. Only an add the server refused pays for it:
// the common path stays one script.
func (t *Transport) setAddSplit(ctx context.Context, keys []string, args []any) error {
	step := func(sc *redis.Script, key string, args ...any) (*redis.Cmd, error) {
		if t.WaitReplicas <= 0 {
			cmd := sc.Run(ctx, once{t.c}, []string{key}, args...)
			return cmd, cmd.Err()
		}
		var cmd *redis.Cmd
		wait, err := t.waitAfter(ctx, key, func(p redis.Pipeliner) { cmd = sc.Eval(ctx, once{p}, []string{key}, args...) })
		if err != nil {
			return nil, err
		}
		if err := cmd.Err(); err != nil {
			return nil, err
		}
		return cmd, t.acknowledged(wait)
	}
	add, err := step(setAddMemberScript, keys[0], args[0], args[1])
	if err != nil {
		return err
	}
	last, err := add.Int64()
	if err != nil {
		return err
	}
	_, err = step(setVersionScript, keys[1], args[2], last)
	return err
}

// SetVersion implements transport.SetVersioner: each SetAdd writes a new
// random version beside the set, in the script that adds the member, and
// it expires with the set. A server that lost its data has none (nil)
// until the next SetAdd, whose version is new.
func (t *Transport) SetVersion(ctx context.Context, key string) ([]byte, error) {
	v, err := t.reader(ctx).Get(ctx, t.setVersionKey(key)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, t.failed(err)
	}
	return v, nil
}

// setPageScript reads one page of a set for SetMembers: of the members,
// latest time first, ARGV[2] from rank ARGV[1], those whose time has not
// passed by the server's clock and of at most ARGV[3] bytes (a longer one
// never leaves the server). Its first value is 1 if the set has no
// unexpired member past the page, else 0. It drops up to ARGV[2] expired
// members, so that a set where many lapsed at once is emptied over
// several pages, none of which blocks the server for long.
var setPageScript = redis.NewScript(`
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local count = tonumber(ARGV[2])
local lapsed = redis.call('ZCOUNT', KEYS[1], '-inf', ms)
if lapsed > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, math.min(lapsed, count) - 1)
end
local start = tonumber(ARGV[1])
local page = redis.call('ZREVRANGE', KEYS[1], start, start + count - 1, 'WITHSCORES')
local limit = tonumber(ARGV[3])
local out = {0}
if #page < 2 * count then out[1] = 1 end
for i = 1, #page, 2 do
  if tonumber(page[i + 1]) <= ms then
    out[1] = 1
    break
  end
  if #page[i] <= limit then out[#out + 1] = page[i] end
end
return out
`)

// setPage is how many members SetMembers reads with one script: about
// 150 KB of the farm's revocations, a millisecond or so of the server's
// time, so that other clients' commands run between two pages.
var setPage = 1000

// SetMembers implements transport.Coordinator; it returns, of the
// transport.MaxSetMembers members that lapse last, those of at most
// transport.MaxSetMemberSize bytes. It reads them a page at a time
// (setPageScript), latest first, so that a large set never holds the
// server for the whole read: an add between two pages may have a member
// read twice, never one missed that was there before the read began.
func (t *Transport) SetMembers(ctx context.Context, key string) ([][]byte, error) {
	var out [][]byte
	for start := 0; start < transport.MaxSetMembers; start += setPage {
		n := min(setPage, transport.MaxSetMembers-start)
		v, err := setPageScript.Run(ctx, t.reader(ctx), []string{t.prefix + key}, start, n, transport.MaxSetMemberSize).Slice()
		if err != nil {
			return nil, t.failed(err)
		}
		if len(v) == 0 {
			return nil, fmt.Errorf("redisbus: set members: empty reply")
		}
		for _, m := range v[1:] {
			s, ok := m.(string)
			if !ok {
				return nil, fmt.Errorf("redisbus: set members: a member of type %T", m)
			}
			out = append(out, []byte(s))
		}
		if done, _ := v[0].(int64); done == 1 {
			break
		}
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
	_ transport.Pinger           = (*Transport)(nil)
	_ transport.Bus              = (*Transport)(nil)
	_ transport.Store            = (*Transport)(nil)
	_ transport.Batcher          = (*Transport)(nil)
	_ transport.UnorderedBatcher = (*Transport)(nil)

	_ transport.RecordTaker     = (*Transport)(nil)
	_ transport.RecordSwapper   = (*Transport)(nil)
	_ transport.RecordGetter    = (*Transport)(nil)
	_ transport.Striker         = (*Transport)(nil)
	_ transport.RegisterRenewer = (*Transport)(nil)
	_ transport.SetVersioner    = (*Transport)(nil)
)
