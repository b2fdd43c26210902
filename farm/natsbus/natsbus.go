// Package natsbus is the farm's NATS transport, built on nats.go: a
// transport.Bus over core NATS publish/subscribe and a transport.Store over a
// JetStream key-value bucket.
//
// A farm named F uses the subject "tlsfarm.F.bus" and the bucket
// "tlsfarm_F" (stream "KV_tlsfarm_F"), where F is the farm name with every
// byte outside [A-Za-z0-9-] written as "_" and two hex digits, so that any
// farm name is one legal subject token and bucket name and distinct farms
// never share either. Messages and values are sealed by the farm: nothing
// on the bus or in the bucket is usable, or accepted back, without the farm
// secret, which is separate from any NATS credential.
//
// Keys expire by the server's per-message TTL on nats-server 2.11 and later.
// Older servers have none: there a key's expiry is kept in its value, an
// expired key reads as absent, and a bucket's age limit reclaims the space;
// the session records then live in a bucket of their own, "tlsfarm_F_s",
// whose age limit follows the session lifetime (Options.LegacyRecordAge),
// while the few coordination keys keep the longer Options.LegacyMaxAge.
// See docs/transports.md.
//
// The embedded server for a zero-setup farm is in the natsembed
// sub-package, so that a binary that only connects to NATS does not carry
// a server.
//
// Start with Open (or New, on a connection of your own) and give the
// Transport to farm.Config as both Bus and Store.
package natsbus

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tlsfarm/tlsfarm/internal/redact"
)

// DefaultLegacyMaxAge is the default of Options.LegacyMaxAge: longer than
// the farm keeps a coordination key with a TTL (revocations, 24h by
// default), and longer than the default ticket key rotation interval (12h),
// which rewrites the one key the farm stores without a TTL.
const DefaultLegacyMaxAge = 25 * time.Hour

// DefaultLegacyRecordAge is the default of Options.LegacyRecordAge: the
// default session lifetime (2h) and a margin.
const DefaultLegacyRecordAge = 2*time.Hour + 10*time.Minute

// maxFarmName is the longest farm name accepted, as in the farm package.
const maxFarmName = 64

// Options configure a Transport. The zero value (or nil) is a working
// configuration.
type Options struct {
	// Name names the connection in the server's monitoring (connz). The
	// default is "tlsfarm <farm>".
	Name string

	// CredsFile is a NATS credentials file (a user JWT and its nkey seed,
	// as nsc writes them), for servers with decentralized authentication.
	// Empty means the URL's user and password or token, if any.
	CredsFile string

	// TLSConfig, if set, makes the connection use TLS with this
	// configuration, whatever the URL's scheme. A tls:// URL with a nil
	// TLSConfig uses TLS with the system's roots.
	TLSConfig *tls.Config

	// NATS are further connection options (nats.RootCAs, nats.Nkey, ...),
	// applied after the ones above and the transport's own (a
	// nats.ErrorHandler here replaces the transport's, which logs
	// asynchronous errors with slog and leaves slow consumers to the
	// bus subscription's count). The transport appends its own
	// nats.MaxReconnects(-1), nats.RetryOnFailedConnect(true),
	// nats.IgnoreAuthErrorAbort() and nats.ReconnectBufSize(-1) last: it
	// relies on the client reconnecting forever, and on nothing it
	// reported failed being sent later.
	NATS []nats.Option

	// Replicas is the number of replicas of the bucket when the transport
	// creates it. Zero means the URL's replicas option if it has one, else
	// 3 when the server is part of a cluster and 1 when it is alone. A
	// bucket that already exists is used as it is, so an operator may
	// create it with any settings that keep one value per key (history 1),
	// but if Replicas or the URL asked for a number and the bucket has
	// another, every store operation fails with an error that says so.
	Replicas int

	// MemoryStorage keeps a bucket the transport creates in memory instead
	// of on disk: faster, and lost when the server restarts.
	MemoryStorage bool

	// LegacyMaxAge is the initial age limit of a bucket the transport
	// creates on a server without per-message TTL (before nats-server
	// 2.11): every key is dropped this long after it was last written,
	// including keys written with none. A key written with a longer TTL
	// (a revocation of a long-lived session) raises the limit to cover
	// it; the limit never falls by itself. Default DefaultLegacyMaxAge.
	// Unused on newer servers, where each key expires by its own TTL.
	LegacyMaxAge time.Duration

	// LegacyRecordAge is the initial age limit of the bucket that holds the
	// session records on a server without per-message TTL (its name is
	// RecordBucket). A record written with a longer TTL raises the limit to
	// cover it; the limit never falls by itself. Default
	// DefaultLegacyRecordAge. Unused on newer servers.
	LegacyRecordAge time.Duration

	// PendingMsgs and PendingBytes bound what nats.go queues for the bus
	// subscription while the node is still handling earlier messages
	// (nats.Subscription.SetPendingLimits). Past either bound the client
	// drops what arrives, while the connection stays up: a slow consumer.
	// The transport counts the drops (Dropped) and logs them at most
	// once a minute; the farm's tallies (farm.Config.TallyInterval) find
	// the loss and settle it. Zero means nats.go's defaults
	// (nats.DefaultSubPendingMsgsLimit messages,
	// nats.DefaultSubPendingBytesLimit bytes); negative means no bound.
	// The URL options pending_msgs=N and pending_bytes=N set them too.
	PendingMsgs  int
	PendingBytes int

	// MarkInterval is how often a running Subscribe marks its delivery
	// (see Transport.DeliveredThrough): a round trip to the server on the
	// subscription's connection, then a count of what the subscription
	// has queued. Zero means DefaultMarkInterval; negative means no
	// marking, so that DeliveredThrough always returns the zero Time.
	MarkInterval time.Duration
}

// DefaultMarkInterval is the default of Options.MarkInterval.
const DefaultMarkInterval = 100 * time.Millisecond

// A Transport is a transport.Bus and a transport.Store on one NATS connection.
// Its methods are safe for concurrent use.
type Transport struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	own     bool // Close closes nc
	subject string
	bucket  string
	opts    Options
	secrets []string // passwords and tokens in the URL, redacted from errors

	// If set (by a test), called with each conditional write (a take's
	// purge, a swap's write, a cut's) about to be sent.
	beforeCondWrite func(*nats.Msg, []jetstream.PublishOpt)

	store   atomic.Pointer[bucketState] // nil until the bucket is open
	initMu  sync.Mutex
	initCh  chan struct{} // closed when the running bucket lookup ends
	initErr error         // how the last lookup failed

	offset atomic.Int64 // server clock minus ours, in ns, as last measured

	closed    chan struct{} // closed by Close
	closeOnce sync.Once

	subMu    sync.Mutex
	subs     map[*nats.Subscription]struct{} // the bus subscriptions open
	dropBase uint64                          // what the closed ones dropped
	slow     atomic.Uint64                   // slow consumer episodes
	warnMu   sync.Mutex
	warned   time.Time // when drops were last logged
	warnedAt uint64    // Dropped then

	base time.Time              // when New ran: marks are kept as durations since
	mark atomic.Pointer[marker] // the running Subscribe's delivery mark, or nil
}

// Open connects to NATS at rawURL for the named farm. It does not wait for
// the server: a transport opened while NATS is down works once it is up,
// and the client reconnects on its own, forever, after every failure.
//
// URL forms (several servers of one cluster separated by commas):
//
//	nats://[user:password@]host:port     plain
//	nats://token@host:port               token authentication
//	tls://[user:password@]host:port      TLS
//
// A query on any of them sets options: replicas=N (Options.Replicas), such
// as nats://a:4222,nats://b:4222,nats://c:4222?replicas=3, and
// pending_msgs=N and pending_bytes=N (Options.PendingMsgs and
// Options.PendingBytes; -1 for no bound). Each option may be given once in
// the whole URL.
//
// opts may be nil. No error Open returns, nor any the Transport reports,
// shows a password or token from rawURL. An "@" after a host (a password
// or token with an unencoded "/", "?" or "#") is an error.
func Open(rawURL, farmName string, opts *Options) (*Transport, error) {
	if opts == nil {
		opts = &Options{}
	}
	if _, err := token(farmName); err != nil {
		return nil, err
	}
	servers, secrets, opts, err := parseURL(rawURL, opts)
	if err != nil {
		return nil, err
	}
	name := opts.Name
	if name == "" {
		name = "tlsfarm " + farmName
	}
	o := []nats.Option{
		nats.Name(name),
		nats.ReconnectWait(time.Second),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
		// Find a silent (paused, partitioned) server in seconds, not the
		// default four minutes.
		nats.PingInterval(5 * time.Second),
		nats.MaxPingsOutstanding(2),
		// A node drops its own messages unopened; not sending them back
		// saves the server a delivery and the node a read and a wake-up
		// per message.
		nats.NoEcho(),
		// nats.go's default prints every asynchronous error to stderr,
		// with the connection's ID and the subject. A slow consumer is
		// the bus subscription's to count and log (see
		// Options.PendingMsgs); the rest go to slog.
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if !errors.Is(err, nats.ErrSlowConsumer) {
				slog.Warn("natsbus: NATS asynchronous error", "err", redact.Error(err, secrets))
			}
		}),
	}
	if opts.CredsFile != "" {
		o = append(o, nats.UserCredentials(opts.CredsFile))
	}
	if opts.TLSConfig != nil {
		o = append(o, nats.Secure(opts.TLSConfig))
	}
	o = append(o, opts.NATS...)
	// Keep trying also when the server refuses the credentials: an
	// operator may be fixing them on the server.
	// Keep nothing for later while the connection is down: a publish or
	// a store write made then fails at once (the transport reports it
	// failed), instead of waiting in nats.go's reconnect buffer to be
	// sent when the client is back, after whatever a peer wrote or
	// deleted meanwhile.
	o = append(o, nats.MaxReconnects(-1), nats.RetryOnFailedConnect(true), nats.IgnoreAuthErrorAbort(),
		nats.ReconnectBufSize(-1))
	nc, err := nats.Connect(strings.Join(servers, ","), o...)
	if err != nil {
		return nil, fmt.Errorf("natsbus: %v", redact.Error(err, secrets))
	}
	t, err := New(nc, farmName, opts)
	if err != nil {
		nc.Close()
		return nil, err
	}
	t.own = true
	t.secrets = secrets
	return t, nil
}

// CheckURL reports whether Open would accept rawURL and farmName, without
// connecting: the URL's form, its servers and its options. As Open's,
// its errors never show a password or token from rawURL. A server that
// cannot be reached, or refuses the credentials, is not found here.
func CheckURL(rawURL, farmName string) error {
	if _, err := token(farmName); err != nil {
		return err
	}
	_, _, _, err := parseURL(rawURL, &Options{})
	return err
}

// parseURL reads Open's rawURL: the servers to connect to (without the
// query), the passwords and tokens it holds (to redact from errors), and
// opts with the URL's options applied (a copy if any applies).
func parseURL(rawURL string, opts *Options) (servers, secrets []string, _ *Options, _ error) {
	given := map[string]int{} // how often each URL option appears
	for _, s := range strings.Split(rawURL, ",") {
		u, err := url.Parse(strings.TrimSpace(s))
		if err != nil {
			return nil, nil, nil, fmt.Errorf("natsbus: bad URL: %v", redact.URLError(err))
		}
		// A lone user name is a token.
		secrets = append(secrets, redact.Passwords(u)...)
		secrets = append(secrets, redact.Token(u)...)
		if err := redact.CheckAt(u); err != nil {
			return nil, nil, nil, fmt.Errorf("natsbus: bad URL: %v", err)
		}
		q := u.Query()
		for _, k := range slices.Sorted(maps.Keys(q)) {
			// Once in the whole URL, whichever server's part it is on.
			if given[k] += len(q[k]); given[k] > 1 {
				return nil, nil, nil, fmt.Errorf("natsbus: URL option %q is given %d times: give it once", k, given[k])
			}
		}
		for k, v := range q {
			switch {
			case k == "replicas" && len(v) == 1:
				n, err := strconv.Atoi(v[0])
				if err != nil || n < 1 || n > 5 {
					return nil, nil, nil, fmt.Errorf("natsbus: replicas=%q: want 1 to 5", v[0])
				}
				if opts.Replicas == 0 {
					o := *opts
					o.Replicas = n
					opts = &o
				} else if opts.Replicas != n {
					return nil, nil, nil, fmt.Errorf("natsbus: replicas=%d in the URL, %d in Options", n, opts.Replicas)
				}
			case (k == "pending_msgs" || k == "pending_bytes") && len(v) == 1:
				n, err := strconv.Atoi(v[0])
				if err != nil || n == 0 || n < -1 {
					return nil, nil, nil, fmt.Errorf("natsbus: %s=%q: want a positive number, or -1 for no bound", k, v[0])
				}
				o := *opts
				f := &o.PendingMsgs
				if k == "pending_bytes" {
					f = &o.PendingBytes
				}
				if *f != 0 && *f != n {
					return nil, nil, nil, fmt.Errorf("natsbus: %s=%d in the URL, %d in Options", k, n, *f)
				}
				*f = n
				opts = &o
			default:
				return nil, nil, nil, fmt.Errorf("natsbus: unknown URL option %q", k)
			}
		}
		u.RawQuery = ""
		servers = append(servers, u.String())
		if u.Scheme != "nats" && u.Scheme != "tls" {
			return nil, nil, nil, fmt.Errorf("natsbus: URL scheme %q: want nats or tls", u.Scheme)
		}
		if u.Host == "" {
			return nil, nil, nil, errors.New("natsbus: URL has no host")
		}
	}
	return servers, secrets, opts, nil
}

// New returns a transport for the named farm on a connection the caller
// made (and closes). The connection should reconnect forever
// (nats.MaxReconnects(-1)) and buffer nothing while it does
// (nats.ReconnectBufSize(-1): otherwise a write that failed during an
// outage may still reach the server when the client is back, over a
// peer's later delete), and may be made with nats.NoEcho(), as Open
// makes it, so that the node's own messages do not come back to it; if it
// closes, Subscribe returns an error and every other method fails. Only
// opts' bucket settings (Replicas, MemoryStorage, LegacyMaxAge,
// LegacyRecordAge) and the subscription's (PendingMsgs, PendingBytes,
// MarkInterval) apply; opts may be nil.
func New(nc *nats.Conn, farmName string, opts *Options) (*Transport, error) {
	tok, err := token(farmName)
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc,
		// A batch whose acknowledgments never come (the connection
		// dropped) is forgotten, not kept for ever.
		jetstream.WithPublishAsyncTimeout(10*time.Second))
	if err != nil {
		return nil, fmt.Errorf("natsbus: %v", err)
	}
	t := &Transport{
		nc:      nc,
		js:      js,
		subject: "tlsfarm." + tok + ".bus",
		bucket:  "tlsfarm_" + tok,
		closed:  make(chan struct{}),
		base:    time.Now(),
	}
	if opts != nil {
		t.opts = *opts
	}
	if t.opts.LegacyMaxAge <= 0 {
		t.opts.LegacyMaxAge = DefaultLegacyMaxAge
	}
	if t.opts.LegacyRecordAge <= 0 {
		t.opts.LegacyRecordAge = DefaultLegacyRecordAge
	}
	return t, nil
}

// token returns the farm name as one subject token and bucket name part:
// bytes in [A-Za-z0-9-] as they are, every other byte as "_" and two hex
// digits. The mapping is one to one. It rejects an empty name and one
// longer than the farm package allows.
func token(farmName string) (string, error) {
	if farmName == "" || len(farmName) > maxFarmName {
		return "", fmt.Errorf("natsbus: farm name must be 1 to %d bytes", maxFarmName)
	}
	var b strings.Builder
	for i := 0; i < len(farmName); i++ {
		c := farmName[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "_%02x", c)
		}
	}
	return b.String(), nil
}

// Close closes the connection, if Open made it. Writes still waiting for
// the server's acknowledgments fail at once (nats.go would have them wait
// for their context, or 10 seconds).
func (t *Transport) Close() error {
	t.closeOnce.Do(func() { close(t.closed) })
	if t.own {
		t.nc.Close()
	}
	return nil
}

// Conn returns the transport's NATS connection.
func (t *Transport) Conn() *nats.Conn { return t.nc }

// Subject returns the farm's bus subject, "tlsfarm.<farm>.bus".
func (t *Transport) Subject() string { return t.subject }

// Bucket returns the name of the farm's key-value bucket, "tlsfarm_<farm>".
func (t *Transport) Bucket() string { return t.bucket }

// RecordBucket returns the name of the bucket that holds the farm's session
// records on a server without per-message TTL, "tlsfarm_<farm>_s" (no farm's
// Bucket has this name). On newer servers the records are in Bucket.
func (t *Transport) RecordBucket() string { return t.bucket + "_s" }
