// Package amqpbus is the farm's RabbitMQ transport, built on amqp091-go: a
// transport.Bus over a fanout exchange. RabbitMQ gives the farm no store: a farm
// on it runs in broadcast mode, and a node resumes only the sessions it
// received while it was subscribed.
//
// A farm named F publishes to the exchange "tlsfarm.F" (fanout, not
// durable), where F is the farm name with every byte outside
// [A-Za-z0-9.:-] written as "_" and two hex digits. Each Bus binds a queue
// of its own to it, so every node receives every message. The queue is
// named once per Bus, "tlsfarm.F_q" and 16 random hex digits, and outlives
// the subscriber's connection for Options.KeepQueue: what is published
// while a node is cut off waits in it, and the node receives it when it
// reconnects. The Bus is a transport.MessageKeeper: when it finds on
// reconnecting that its queue was gone (it expired, or the broker
// restarted: the queue is not durable) or full, it reports
// transport.ErrMessagesLost with the state up. Close deletes the queue.
// Messages are sealed by the farm: nothing on the exchange is usable, or
// accepted back, without the farm secret, which is separate from any
// RabbitMQ credential. A message longer than transport.MaxMessageSize,
// which the farm never sends, is acknowledged unread: the Bus reads the
// connection beneath amqp091-go and skips its body, which the library
// would otherwise read whole (up to the broker's max_message_size, 128 MiB
// by default) before the Bus could refuse it.
//
// amqp091-go does not reconnect on its own (its experimental Recovery is
// not used): Publish redials on its next call after a failure, and
// Subscribe redials with backoff, reporting each change of state.
//
// Start with Open and give the Bus to farm.Config as its Bus, with no
// Store.
package amqpbus

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redact"
	"github.com/tlsfarm/tlsfarm/internal/retry"
)

// Defaults for the fields of Options.
const (
	DefaultQueueLength = 100000
	DefaultHeartbeat   = 5 * time.Second
	DefaultDialTimeout = 10 * time.Second
	DefaultPrefetch    = 256
	DefaultKeepQueue   = 2 * time.Minute
)

// queueBytesPerMessage, minQueueBytes and maxQueueBytesFloor make the
// default of Options.QueueBytes: QueueLength times queueBytesPerMessage,
// at least maxQueueBytesFloor, at most QueueLength largest messages; and
// no value is under minQueueBytes.
const (
	queueBytesPerMessage = 1 << 10
	maxQueueBytesFloor   = 16 * transport.MaxMessageSize
	minQueueBytes        = 2 * transport.MaxMessageSize
)

// maxFarmName is the longest farm name accepted, as in the farm package.
const maxFarmName = 64

// Options configure a Bus. The zero value (or nil) is a working
// configuration.
type Options struct {
	// Name names the connections in the broker's management interface
	// (the connection_name client property). The default is
	// "tlsfarm <farm>".
	Name string

	// TLSConfig configures TLS for amqps:// URLs (nil: the system's roots
	// and the URL's host name).
	TLSConfig *tls.Config

	// NoConfirm publishes without publisher confirms: Publish then returns
	// once the messages are written to the socket, not once the broker
	// has taken them, and a broker that fails meanwhile loses them
	// silently. Confirms cost one round trip per batch.
	NoConfirm bool

	// QueueLength bounds each subscriber's queue (x-max-length); when a
	// node falls that far behind, the broker drops the oldest messages
	// rather than grow without bound. Default DefaultQueueLength.
	QueueLength int

	// QueueBytes bounds the bytes (the messages' bodies) each
	// subscriber's queue holds (x-max-length-bytes): QueueLength alone
	// lets a queue of the largest messages (transport.MaxMessageSize,
	// 1 MiB) hold QueueLength MiB. The broker drops the oldest messages
	// when either bound is reached, and a subscriber that comes back to a
	// queue full by either reports the loss. The default is QueueLength
	// KiB (about 98 MiB for the default QueueLength; the farm's messages
	// carry sealed sessions of about 300 bytes, one or a batch of them),
	// at least 16 MiB, and at most QueueLength times
	// transport.MaxMessageSize, so that with a small QueueLength the
	// count binds first. A bound under 2 MiB, given or by default, is
	// taken as 2 MiB: the largest message, and room for the next. A
	// negative value declares no byte bound, as before this field.
	//
	// The broker does not tell a queue's bytes: when a subscriber comes
	// back to a backlog that could be full by bytes (of more than
	// QueueBytes/transport.MaxMessageSize - 1 messages, 97 or more by
	// default, and fewer than QueueLength), it reads the backlog before
	// it reports the subscription up, stopping once the bytes are over
	// the mark, and acknowledges it, keeping it in memory (up to about
	// QueueBytes) to deliver first once up. A subscription whose context
	// ends before then leaves what it took undelivered, and the next
	// Subscribe reports transport.ErrMessagesLost.
	//
	// A queue of the Bus's name that the broker already has with other
	// arguments (declared without this bound) is consumed as it is, with
	// the bounds it was declared with: the broker refuses to declare it
	// again with others, and its messages are not given up. The Bus then
	// logs a warning, once, and the byte bound is in force from the next
	// declaration after that queue is gone (expired, deleted, or the
	// broker restarted).
	QueueBytes int64

	// Heartbeat is the AMQP heartbeat interval, which bounds how long a
	// dead broker or a broken network goes unnoticed (about twice the
	// interval). Default DefaultHeartbeat.
	Heartbeat time.Duration

	// DialTimeout bounds connecting, TLS and AMQP handshakes included,
	// when the caller's context has no earlier deadline. Default
	// DefaultDialTimeout.
	DialTimeout time.Duration

	// KeepQueue is how long the broker keeps a subscriber's queue once
	// no connection consumes from it (x-expires): a node whose connection
	// is lost for less than that finds, when it reconnects, every message
	// published meanwhile (up to QueueLength and QueueBytes) and reports
	// nothing lost.
	// A node that is gone for good leaves its queue, and the messages that
	// pile up in it, on the broker that long. The farm takes the
	// retirements, grace cuts and revocations a kept queue delivers for
	// as long as the sessions they concern may live (the cache's session
	// Lifetime, 2h by default), and takes an outage longer than half of
	// that for a gap; a peer's new session older than farm.Config.MaxAge
	// (30s by default) is not inserted. So KeepQueue, not the farm, bounds
	// the outages a node comes back from with its cache. Default
	// DefaultKeepQueue.
	KeepQueue time.Duration

	// Prefetch bounds the messages the broker sends a subscriber ahead of
	// its acknowledgments (AMQP basic.qos), and so the memory a slow node
	// spends on messages it has not handled yet; the rest wait in its
	// queue, itself bounded by QueueLength and QueueBytes. Default
	// DefaultPrefetch.
	Prefetch int
}

// A Bus is a transport.Bus on a RabbitMQ broker. Its methods are safe for
// concurrent use; Publish calls are serialized on one channel.
type Bus struct {
	dialURL   string     // the URL as amqp091-go dials it: amqp://, the port explicit for amqps
	tls       bool       // the URL is amqps://
	host      string     // the URL's host name, the TLS server name by default
	query     url.Values // the URL's options
	passwords []string   // the URL's password, decoded and as written: redacted from every error
	exchange  string
	opts      Options

	mu     sync.Mutex // guards pub and closed; held by Publish
	pub    *publisher
	closed bool

	probeMu sync.Mutex // guards probe; held by Ping
	probe   *publisher // Ping's connection

	warn func(msg string, args ...any) // slog.Warn; tests replace it
	// afterDeclare, if set (tests), runs in each subscription attempt
	// once its queue is declared, before the declare's counts are used.
	afterDeclare func()

	qmu       sync.Mutex       // guards the fields below
	queue     string           // the Bus's queue, named once in Open
	queueUse  bool             // a Subscribe call consumes from queue
	declared  map[string]bool  // queues declared so far (Close deletes them)
	unbounded map[string]bool  // queues found with other arguments (warned about once)
	gaps      map[string]error // losses a Subscribe call ended without reporting, by queue
}

// A publisher is the connection and channel that Publish (or Ping) uses.
type publisher struct {
	conn *amqp.Connection
	ch   *amqp.Channel
	sock net.Conn // the connection's socket; set for Ping's
}

// Open returns a bus for the named farm on the broker at rawURL. It does
// not connect: Publish and Subscribe do, and again after every failure, so
// a bus opened while the broker is down works once it is up.
//
// URL forms (the vhost defaults to "/"; a password with reserved
// characters must be percent-encoded):
//
//	amqp://[user:password@]host[:port][/vhost]     plain, port 5672
//	amqps://[user:password@]host[:port][/vhost]    TLS, port 5671
//
// A query option may be given once; see docs/transports.md for those
// accepted.
//
// opts may be nil. No error that Open, Publish or Subscribe reports shows
// the password from rawURL.
func Open(rawURL, farmName string, opts *Options) (*Bus, error) {
	exchange, err := exchangeName(farmName)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("amqpbus: bad URL: %v", redact.URLError(err))
	}
	passwords := redact.Passwords(u)
	if err := redact.CheckAt(u); err != nil {
		return nil, fmt.Errorf("amqpbus: bad URL: %v", err)
	}
	if u.Scheme != "amqp" && u.Scheme != "amqps" {
		return nil, fmt.Errorf("amqpbus: URL scheme %q: want amqp or amqps", u.Scheme)
	}
	if _, err := amqp.ParseURI(rawURL); err != nil {
		return nil, fmt.Errorf("amqpbus: bad URL: %v", redact.Error(redact.URLError(err), passwords))
	}
	q := u.Query()
	for _, k := range slices.Sorted(maps.Keys(q)) {
		if n := len(q[k]); n > 1 {
			// amqp091-go would take the first silently.
			return nil, fmt.Errorf("amqpbus: URL option %q is given %d times: give it once", k, n)
		}
	}
	for k := range q {
		switch k {
		case "heartbeat", "channel_max", "auth_mechanism",
			"certfile", "keyfile", "cacertfile", "server_name_indication":
			// read by amqp091-go
		case "connection_timeout":
			// amqp091-go's dialer reads it; the bus dials with its own.
			return nil, errors.New("amqpbus: URL option connection_timeout: set Options.DialTimeout instead")
		default:
			return nil, fmt.Errorf("amqpbus: unknown URL option %q", k)
		}
	}
	if err := checkURLOptions(u.Scheme, q, opts); err != nil {
		return nil, err
	}
	// amqp091-go dials an amqp:// URL: the Bus does TLS itself (see
	// dialGuarded), on the port amqps implies.
	dialURL := rawURL
	if u.Scheme == "amqps" {
		d := *u
		d.Scheme = "amqp"
		if d.Port() == "" {
			d.Host = net.JoinHostPort(d.Hostname(), "5671")
		}
		dialURL = d.String()
	}
	b := &Bus{dialURL: dialURL, tls: u.Scheme == "amqps", host: u.Hostname(), query: q,
		passwords: passwords, exchange: exchange, warn: slog.Warn,
		declared: make(map[string]bool), unbounded: make(map[string]bool), gaps: make(map[string]error)}
	b.queue = b.newQueueName()
	if opts != nil {
		b.opts = *opts
	}
	if b.opts.Name == "" {
		b.opts.Name = "tlsfarm " + farmName
	}
	if b.opts.QueueLength <= 0 {
		b.opts.QueueLength = DefaultQueueLength
	}
	if b.opts.QueueBytes == 0 {
		b.opts.QueueBytes = defaultQueueBytes(b.opts.QueueLength)
	}
	if b.opts.QueueBytes > 0 {
		b.opts.QueueBytes = max(b.opts.QueueBytes, minQueueBytes)
	}
	if b.opts.Heartbeat <= 0 {
		b.opts.Heartbeat = DefaultHeartbeat
	}
	if b.opts.DialTimeout <= 0 {
		b.opts.DialTimeout = DefaultDialTimeout
	}
	if b.opts.Prefetch <= 0 {
		b.opts.Prefetch = DefaultPrefetch
	}
	if b.opts.KeepQueue <= 0 {
		b.opts.KeepQueue = DefaultKeepQueue
	}
	b.opts.KeepQueue = max(b.opts.KeepQueue, time.Millisecond)
	return b, nil
}

// checkURLOptions refuses the options of an amqp(s) URL that would be
// ignored, or would fail only when the Bus dials: TLS options on an
// amqp:// URL, or beside Options.TLSConfig, which overrides them; one of
// certfile and keyfile without the other (no client certificate, without
// a word); and an auth_mechanism that amqp091-go does not offer.
func checkURLOptions(scheme string, q url.Values, opts *Options) error {
	for _, k := range []string{"certfile", "keyfile", "cacertfile", "server_name_indication"} {
		if !q.Has(k) {
			continue
		}
		if scheme != "amqps" {
			return fmt.Errorf("amqpbus: URL option %s is for amqps:// URLs (TLS); this one is amqp://", k)
		}
		if opts != nil && opts.TLSConfig != nil {
			return fmt.Errorf("amqpbus: URL option %s: the Bus has Options.TLSConfig, which overrides it", k)
		}
	}
	if q.Has("certfile") != q.Has("keyfile") {
		return errors.New("amqpbus: URL options certfile and keyfile (the client certificate) go together: give both or neither")
	}
	if q.Has("auth_mechanism") {
		switch m := q.Get("auth_mechanism"); strings.ToUpper(m) {
		case "PLAIN", "AMQPLAIN", "EXTERNAL":
		default:
			return fmt.Errorf("amqpbus: URL option auth_mechanism %q: want plain, amqplain or external", m)
		}
	}
	return nil
}

// defaultQueueBytes returns the default of Options.QueueBytes for a
// queue of length messages.
func defaultQueueBytes(length int) int64 {
	n := int64(length)
	return min(max(n*queueBytesPerMessage, maxQueueBytesFloor), n*transport.MaxMessageSize)
}

// newQueueName returns a new queue name for the farm: the exchange's name,
// "_q" and 16 random hex digits. No exchange has such a name: in one, "_"
// is followed by two hex digits.
func (b *Bus) newQueueName() string {
	var r [8]byte
	rand.Read(r[:])
	return b.exchange + "_q" + hex.EncodeToString(r[:])
}

// Queue returns the name of the Bus's queue, the one its Subscribe
// consumes from (a second Subscribe at the same time consumes from a
// queue of its own).
func (b *Bus) Queue() string { return b.queue }

// KeepsMessages implements transport.MessageKeeper: it returns true, as
// the Bus's queue keeps what is published while its connection is down
// (see Options.KeepQueue).
func (b *Bus) KeepsMessages() bool { return true }

// exchangeName returns the farm's exchange: "tlsfarm." and the farm name,
// with bytes in [A-Za-z0-9.:-] as they are and every other byte as "_"
// and two hex digits (one to one, and within AMQP's name rules). It
// rejects an empty name and one longer than the farm package allows.
func exchangeName(farmName string) (string, error) {
	if farmName == "" || len(farmName) > maxFarmName {
		return "", fmt.Errorf("amqpbus: farm name must be 1 to %d bytes", maxFarmName)
	}
	var b strings.Builder
	b.WriteString("tlsfarm.")
	for i := 0; i < len(farmName); i++ {
		c := farmName[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == ':' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "_%02x", c)
		}
	}
	return b.String(), nil
}

// Exchange returns the name of the farm's fanout exchange.
func (b *Bus) Exchange() string { return b.exchange }

// closeTimeout bounds how long Close tries to delete the Bus's queues.
const closeTimeout = 2 * time.Second

// Close deletes the queues the Bus declared, within a couple of seconds
// (best effort: a queue it cannot delete expires after
// Options.KeepQueue), and closes the connections of Publish and Ping.
// Subscriptions end with their contexts; one whose queue Close deleted
// stays down until then, and declares no queue again.
func (b *Bus) Close() error {
	b.mu.Lock()
	b.closed = true
	pub := b.pub
	b.pub = nil
	b.mu.Unlock()
	b.qmu.Lock()
	var queues []string
	for q := range b.declared {
		queues = append(queues, q)
	}
	clear(b.declared)
	b.qmu.Unlock()
	if len(queues) > 0 {
		b.deleteQueues(pub, queues)
	}
	if pub != nil {
		pub.close()
	}
	b.closeProbe()
	return nil
}

// deleteQueues deletes queues, on pub's channel if it is open, else on a
// connection of its own, within closeTimeout.
func (b *Bus) deleteQueues(pub *publisher, queues []string) {
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	var conn *amqp.Connection
	var ch *amqp.Channel
	if pub != nil && !pub.conn.IsClosed() && !pub.ch.IsClosed() {
		conn, ch = pub.conn, pub.ch
	} else {
		var err error
		if conn, ch, err = b.dial(ctx); err != nil {
			return
		}
		defer conn.CloseDeadline(time.Now().Add(time.Second))
	}
	stop := closeOnDone(ctx, conn)
	defer stop()
	for _, q := range queues {
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			return // the channel is closed
		}
	}
}

// dial connects to the broker and declares the farm's exchange on a new
// channel, within ctx and the dial timeout.
func (b *Bus) dial(ctx context.Context) (*amqp.Connection, *amqp.Channel, error) {
	conn, ch, _, err := b.dialSocket(ctx)
	return conn, ch, err
}

// dialSocket is dial, and also returns the connection's socket: closing it
// ends every call waiting on the connection at once, whatever the broker
// does (see Ping).
func (b *Bus) dialSocket(ctx context.Context) (*amqp.Connection, *amqp.Channel, net.Conn, error) {
	conn, ch, sock, _, err := b.dialGuarded(ctx)
	return conn, ch, sock, err
}

// dialGuarded is dialSocket, and also returns the frameGuard that
// amqp091-go reads the connection through.
func (b *Bus) dialGuarded(ctx context.Context) (*amqp.Connection, *amqp.Channel, net.Conn, *frameGuard, error) {
	ctx, cancel := context.WithTimeout(ctx, b.opts.DialTimeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	var raw net.Conn
	var guard *frameGuard
	var rawMu sync.Mutex
	props := amqp.NewConnectionProperties()
	props["connection_name"] = b.opts.Name
	var tlsConfig *tls.Config
	if b.tls {
		var err error
		if tlsConfig, err = b.tlsConfig(); err != nil {
			return nil, nil, nil, nil, b.errorf("connecting", err)
		}
	}
	cfg := amqp.Config{
		Heartbeat:  b.opts.Heartbeat,
		Properties: props,
		// amqp091-go is given an amqp:// URL and does no TLS: the bus
		// does it here, so that the frameGuard reads above it.
		Dial: func(network, addr string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// The TLS and AMQP handshakes run under this deadline;
			// amqp091 clears it once the connection is open.
			c.SetDeadline(deadline)
			rawMu.Lock()
			raw = c
			rawMu.Unlock()
			conn := c
			if tlsConfig != nil {
				tc := tls.Client(c, tlsConfig)
				if err := tc.HandshakeContext(ctx); err != nil {
					c.Close()
					return nil, err
				}
				conn = tc
			}
			g := newFrameGuard(conn, transport.MaxMessageSize)
			rawMu.Lock()
			guard = g
			rawMu.Unlock()
			return g, nil
		},
	}
	// A context that ends during the handshakes ends them.
	stop := context.AfterFunc(ctx, func() {
		rawMu.Lock()
		if raw != nil {
			raw.SetDeadline(time.Unix(1, 0))
		}
		rawMu.Unlock()
	})
	conn, err := amqp.DialConfig(b.dialURL, cfg)
	if fired := !stop(); fired && err == nil {
		conn.Close()
		err = ctx.Err()
	} else if fired {
		err = fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	if err != nil {
		return nil, nil, nil, nil, b.errorf("connecting", err)
	}
	// The calls below wait for the broker with no deadline of their own.
	stop = closeOnDone(ctx, conn)
	ch, err := conn.Channel()
	if err == nil {
		err = ch.ExchangeDeclare(b.exchange, amqp.ExchangeFanout, false, false, false, false, nil)
	}
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		conn.CloseDeadline(time.Now().Add(closeGrace))
		return nil, nil, nil, nil, b.errorf("declaring exchange", err)
	}
	rawMu.Lock()
	sock, g := raw, guard
	rawMu.Unlock()
	return conn, ch, sock, g, nil
}

// tlsConfig returns the TLS configuration for an amqps:// URL:
// Options.TLSConfig, or else one made from the URL's cacertfile (else the
// system's roots), certfile and keyfile, and server_name_indication (else
// the URL's host), as amqp091-go would make it.
func (b *Bus) tlsConfig() (*tls.Config, error) {
	var cfg *tls.Config
	if b.opts.TLSConfig != nil {
		cfg = b.opts.TLSConfig.Clone()
	} else {
		cfg = &tls.Config{ServerName: b.query.Get("server_name_indication")}
		if f := b.query.Get("cacertfile"); f != "" {
			pem, err := os.ReadFile(f)
			if err != nil {
				return nil, fmt.Errorf("reading the CA certificates: %w", err)
			}
			cfg.RootCAs = x509.NewCertPool()
			if !cfg.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("no certificate in %s", f)
			}
		}
		if cert, key := b.query.Get("certfile"), b.query.Get("keyfile"); cert != "" && key != "" {
			pair, err := tls.LoadX509KeyPair(cert, key)
			if err != nil {
				return nil, fmt.Errorf("loading the client certificate: %w", err)
			}
			cfg.Certificates = []tls.Certificate{pair}
		}
	}
	if cfg.ServerName == "" {
		cfg.ServerName = b.host
	}
	return cfg, nil
}

// closeOnDone closes conn (within closeGrace) if ctx ends before the
// returned stop is called, so that a call waiting on an unresponsive
// broker returns. stop reports whether it stopped that from happening.
func closeOnDone(ctx context.Context, conn *amqp.Connection) (stop func() bool) {
	return context.AfterFunc(ctx, func() { conn.CloseDeadline(time.Now().Add(closeGrace)) })
}

// closeGrace is how long a connection closed because its context ended,
// or because a call on it failed, waits for the broker's close-ok: a
// broker that answers does so in a round trip, and one that has hung would
// otherwise hold the caller, and a node's Close behind it, for as long. (A
// second held a probe, and Close, 1.1 s on a hung broker; a failed publish
// held the publisher, and Close, 1 s.)
const closeGrace = 100 * time.Millisecond

// errorf wraps err as the bus's error for op, with the URL's password
// replaced.
func (b *Bus) errorf(op string, err error) error {
	if r := redact.Error(err, b.passwords); r != err {
		return fmt.Errorf("amqpbus: %s: %v", op, r)
	}
	return fmt.Errorf("amqpbus: %s: %w", op, err)
}

// Publish implements transport.Bus: every message goes to the farm's exchange
// on one channel, and, unless Options.NoConfirm is set, Publish waits for
// the broker to confirm them all (one round trip for the batch). After a
// failure the connection is dropped, and the next call dials anew.
func (b *Bus) Publish(ctx context.Context, msgs ...[]byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return errors.New("amqpbus: publish on a closed bus")
	}
	if b.pub != nil && (b.pub.conn.IsClosed() || b.pub.ch.IsClosed()) {
		b.pub.drop()
		b.pub = nil
	}
	if b.pub == nil {
		conn, ch, err := b.dial(ctx)
		if err != nil {
			return err
		}
		if !b.opts.NoConfirm {
			if err := ch.Confirm(false); err != nil {
				conn.Close()
				return b.errorf("enabling confirms", err)
			}
		}
		b.pub = &publisher{conn: conn, ch: ch}
	}
	// A blocked connection (a broker under a memory alarm) stops reading:
	// closing the connection is what ends a write stuck on it.
	stop := closeOnDone(ctx, b.pub.conn)
	err := b.pub.publish(ctx, b.exchange, !b.opts.NoConfirm, msgs)
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		b.pub.drop()
		b.pub = nil
		return b.errorf("publish", err)
	}
	return nil
}

func (p *publisher) publish(ctx context.Context, exchange string, confirm bool, msgs [][]byte) error {
	var confirms []*amqp.DeferredConfirmation
	if confirm {
		confirms = make([]*amqp.DeferredConfirmation, 0, len(msgs))
	}
	for _, m := range msgs {
		dc, err := p.ch.PublishWithDeferredConfirmWithContext(ctx, exchange, "", false, false,
			amqp.Publishing{Body: m, DeliveryMode: amqp.Transient})
		if err != nil {
			return err
		}
		if confirm {
			confirms = append(confirms, dc)
		}
	}
	for _, dc := range confirms {
		ok, err := dc.WaitContext(ctx)
		if err != nil {
			return err
		}
		if !ok {
			return errors.New("the broker refused a message (nack), or the channel closed")
		}
	}
	return nil
}

// close closes p's connection when the Bus closes, waiting up to a second
// for the broker's close-ok.
func (p *publisher) close() {
	p.conn.CloseDeadline(time.Now().Add(time.Second))
}

// drop closes p's connection after a call on it failed: the broker may
// have hung, so it waits only closeGrace for the close-ok.
func (p *publisher) drop() {
	p.conn.CloseDeadline(time.Now().Add(closeGrace))
}

// errClosed is the state of a subscription on a closed Bus.
var errClosed = errors.New("amqpbus: the bus is closed")

// Subscribe implements transport.Bus. It connects, binds the Bus's queue
// to the farm's exchange and consumes from it; when the connection or
// channel closes it reports the state down and connects again, with
// backoff (from 100ms, doubling, to 5s, with jitter), until ctx is done.
// It returns ctx.Err() promptly when ctx ends.
//
// The queue outlives the connection (see Options.KeepQueue): once
// subscribed again, it reports up with a nil error if the queue was still
// there and not full, and with transport.ErrMessagesLost if it was gone
// (expired, or the broker restarted), held QueueLength messages, or held
// so many bytes that a message of transport.MaxMessageSize would not fit
// under QueueBytes (in either case the broker may have dropped the
// oldest), or if the Subscribe call before it on the Bus ended with such
// a loss unreported or with messages taken from the queue and not
// delivered. Messages handled but not yet acknowledged when the
// connection failed come again (they are acknowledged in groups, within
// 10ms). While up, it binds its queue to the exchange again every few
// seconds: an exchange deleted under it takes the binding with it, without
// a word, and is then found, declared again, and reported as a loss.
func (b *Bus) Subscribe(ctx context.Context, deliver func([]byte), state func(bool, error)) error {
	queue := b.takeQueue()
	defer b.releaseQueue(queue)
	// A loss found by an attempt that fails before the subscription is
	// up is reported by the one that gets there, and the backlog an
	// attempt read (and acknowledged) is delivered by it too.
	lost := b.takeGap(queue)
	var held backlog
	defer func() {
		if lost != nil || held.n > 0 {
			// Ending with a loss unreported, or with acknowledged
			// messages undelivered: the next Subscribe on queue reports
			// the loss.
			b.putGap(queue, lost)
		}
	}()
	failures := 0
	for {
		if b.isClosed() {
			// Declaring again would bring back the queue Close deleted.
			state(false, errClosed)
			<-ctx.Done()
			return ctx.Err()
		}
		start := time.Now()
		err := b.subscribeOnce(ctx, queue, &lost, &held, deliver, state)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		state(false, err)
		if time.Since(start) > time.Minute {
			failures = 0 // it was up a while: this is a new outage
		}
		failures++
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(retry.Backoff(failures, 100*time.Millisecond, 5*time.Second)):
		}
	}
}

// takeQueue returns the queue a Subscribe call consumes from: the Bus's
// own, unless another call consumes from it (then a new one, so that the
// two do not share its messages).
func (b *Bus) takeQueue() string {
	b.qmu.Lock()
	defer b.qmu.Unlock()
	if b.queueUse {
		return b.newQueueName()
	}
	b.queueUse = true
	return b.queue
}

// releaseQueue ends a Subscribe call's use of queue. A queue of its own is
// deleted by Close, or else by the broker after Options.KeepQueue.
func (b *Bus) releaseQueue(queue string) {
	b.qmu.Lock()
	defer b.qmu.Unlock()
	if queue == b.queue {
		b.queueUse = false
	}
}

// errHeldLost is the loss a Subscribe reports when the one before it on
// the same queue ended holding messages it had taken from the queue and
// not delivered.
var errHeldLost = fmt.Errorf("amqpbus: an earlier subscription ended with messages taken from the queue and not delivered: %w", transport.ErrMessagesLost)

// putGap records that a Subscribe call on queue ended with a loss it did
// not report (err, or errHeldLost if err is nil), for the next call on
// queue to report.
func (b *Bus) putGap(queue string, err error) {
	if err == nil {
		err = errHeldLost
	}
	b.qmu.Lock()
	defer b.qmu.Unlock()
	b.gaps[queue] = err
}

// takeGap returns, and forgets, the loss an earlier Subscribe call on
// queue left to report (see putGap), or nil.
func (b *Bus) takeGap(queue string) error {
	b.qmu.Lock()
	defer b.qmu.Unlock()
	err := b.gaps[queue]
	delete(b.gaps, queue)
	return err
}

func (b *Bus) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

// subscribeOnce runs one subscription on queue until its connection fails
// or ctx ends.
// *lost is the loss to report once up, if any; subscribeOnce sets it when
// it finds one, and clears it once reported. *held is the backlog read
// from the queue, and acknowledged, before the state was reported up (by
// this attempt or one that failed before it): subscribeOnce delivers it
// first once up, and then clears it.
func (b *Bus) subscribeOnce(ctx context.Context, queue string, lost *error, held *backlog, deliver func([]byte), state func(bool, error)) error {
	conn, ch, _, guard, err := b.dialGuarded(ctx)
	if err != nil {
		return err
	}
	// Return at once when ctx ends, also from a call below that waits on
	// an unresponsive broker; the connection closes in the background.
	stop := closeOnDone(ctx, conn)
	defer func() {
		if stop() {
			conn.CloseDeadline(time.Now().Add(closeGrace))
		}
	}()
	connClosed := conn.NotifyClose(make(chan *amqp.Error, 1))
	// Was the queue kept? A passive declare fails, and closes the
	// channel, if it is not there.
	existed := true
	if _, err := ch.QueueDeclarePassive(queue, false, false, false, false, nil); err != nil {
		var ae *amqp.Error
		if !errors.As(err, &ae) || ae.Code != amqp.NotFound {
			return b.errorf("looking for the queue", err)
		}
		existed = false
		if ch, err = conn.Channel(); err != nil {
			return b.errorf("opening a channel", err)
		}
	}
	args := amqp.Table{
		"x-max-length": int64(b.opts.QueueLength),
		"x-expires":    b.opts.KeepQueue.Milliseconds(),
	}
	bytesBound := b.opts.QueueBytes > 0
	if bytesBound {
		args["x-max-length-bytes"] = b.opts.QueueBytes
	}
	q, err := ch.QueueDeclare(queue, false, false, false, false, args)
	if err != nil {
		var ae *amqp.Error
		if !errors.As(err, &ae) || ae.Code != amqp.PreconditionFailed {
			return b.errorf("declaring queue", err)
		}
		// The queue is there with other arguments (declared without the
		// byte bound): the broker refuses ours, and has closed the
		// channel. Consume it as it is, rather than give up its
		// messages.
		if ch, err = conn.Channel(); err != nil {
			return b.errorf("opening a channel", err)
		}
		if q, err = ch.QueueDeclarePassive(queue, false, false, false, false, nil); err != nil {
			return b.errorf("declaring queue", err)
		}
		existed, bytesBound = true, false
		b.warnUnbounded(queue, ae)
	}
	if b.afterDeclare != nil {
		b.afterDeclare()
	}
	if existed && q.Consumers > 0 {
		// The broker still counts a consumer: the previous connection's,
		// which it has not yet found gone. What that consumer holds
		// unacknowledged is not in q.Messages, and comes back to the
		// queue when the broker drops it, perhaps over the queue's
		// bounds (the broker then drops the oldest): a backlog measured
		// from q.Messages would miss that loss if the consumer went
		// between this declare and the Consume below. Try again; the
		// exclusive Consume would be refused meanwhile anyway.
		return fmt.Errorf("amqpbus: queue %s still has %d consumer(s), the previous connection's perhaps", queue, q.Consumers)
	}
	chClosed := ch.NotifyClose(make(chan *amqp.Error, 1))
	b.qmu.Lock()
	had := b.declared[queue]
	b.declared[queue] = true
	b.qmu.Unlock()
	if b.isClosed() {
		// Close ran after the check in Subscribe: it sets closed before
		// it reads declared, so either it deletes the queue or this
		// does. Consuming on a closed Bus would go on until ctx ends,
		// and the queue would stay KeepQueue after that.
		ch.QueueDelete(queue, false, false, false)
		return errClosed
	}
	measure := false
	switch {
	case had && !existed:
		*lost = fmt.Errorf("amqpbus: the queue was gone when the subscriber came back: %w", transport.ErrMessagesLost)
	case existed && q.Messages >= b.opts.QueueLength:
		*lost = fmt.Errorf("amqpbus: the queue was full when the subscriber came back: %w", transport.ErrMessagesLost)
	case existed && bytesBound && *lost == nil && (held.n > 0 || b.mayHoldFull(q.Messages)):
		measure = true
	}
	if err := ch.QueueBind(q.Name, "", b.exchange, false, nil); err != nil {
		return b.errorf("binding queue", err)
	}
	if err := ch.Qos(b.opts.Prefetch, 0, false); err != nil {
		return b.errorf("setting the prefetch bound", err)
	}
	deliveries, err := ch.Consume(q.Name, "", false, true, false, false, nil)
	if err != nil {
		return b.errorf("consuming", err)
	}
	closed := func(e *amqp.Error) error {
		if e == nil {
			return errors.New("amqpbus: connection closed")
		}
		return b.errorf("connection lost", e)
	}
	// ended returns why deliveries closed: the consumer is gone, and the
	// reason follows on a close channel.
	ended := func() error {
		select {
		case e := <-connClosed:
			return closed(e)
		case e := <-chClosed:
			return closed(e)
		case <-time.After(time.Second):
			return errors.New("amqpbus: consumer cancelled")
		}
	}
	if measure {
		full, err := b.readBacklog(ctx, deliveries, q.Messages, held, guard, ended)
		if err != nil {
			return err
		}
		if full {
			*lost = fmt.Errorf("amqpbus: the queue was full (Options.QueueBytes) when the subscriber came back: %w", transport.ErrMessagesLost)
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	state(true, *lost)
	*lost = nil
	for len(held.msgs) > 0 {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		m := held.msgs[0]
		held.msgs[0] = nil
		held.msgs = held.msgs[1:]
		deliver(m)
	}
	*held = backlog{}
	// Acknowledge in groups (multiple=true): when half the prefetch
	// window is unacknowledged, or ackDelay after the first of a group.
	// (deliveries is unbuffered: its length, always 0, cannot tell
	// whether more are waiting.)
	unacked := 0
	var last amqp.Delivery
	ackTimer := time.NewTimer(time.Hour)
	ackTimer.Stop()
	defer ackTimer.Stop()
	// The broker drops the queue's binding, and says nothing, when the
	// exchange is deleted; a publisher's next connection declares it
	// again, unbound. Binding again (which changes nothing while the
	// binding is there) finds that: a missing exchange is a loss, and a
	// binding made again in time leaves the loss to the farm's tallies.
	rebind := time.NewTicker(rebindInterval)
	defer rebind.Stop()
	ack := func() error {
		ackTimer.Stop()
		if err := last.Ack(true); err != nil {
			return b.errorf("acknowledging", err)
		}
		unacked = 0
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case d, ok := <-deliveries:
			if ctx.Err() != nil {
				// select picks at random among ready cases: deliver
				// nothing once ctx is done (unacknowledged, d comes
				// again to the queue's next consumer).
				return ctx.Err()
			}
			if !ok {
				return ended()
			}
			if len(d.Body) > 0 && len(d.Body) <= transport.MaxMessageSize {
				deliver(d.Body)
			}
			// A message too long to deliver was cut by the guard (and
			// comes with an empty body): nothing to forget but its size.
			if len(d.Body) == 0 {
				guard.cut(d.DeliveryTag)
			}
			last = d
			unacked++
			if unacked >= max(b.opts.Prefetch/2, 1) {
				if err := ack(); err != nil {
					return err
				}
			} else if unacked == 1 {
				ackTimer.Reset(ackDelay)
			}
		case <-ackTimer.C:
			if unacked > 0 {
				if err := ack(); err != nil {
					return err
				}
			}
		case <-rebind.C:
			if err := ch.QueueBind(q.Name, "", b.exchange, false, nil); err != nil {
				var ae *amqp.Error
				if errors.As(err, &ae) && ae.Code == amqp.NotFound {
					*lost = fmt.Errorf("amqpbus: the farm's exchange was gone: %w", transport.ErrMessagesLost)
				}
				return b.errorf("binding queue again", err)
			}
		case e := <-connClosed:
			return closed(e)
		case e := <-chClosed:
			return closed(e)
		}
	}
}

// rebindInterval is how often a subscriber binds its queue to the farm's
// exchange again, to find an exchange deleted and its binding gone.
const rebindInterval = 3 * time.Second

// ackDelay is how long a subscriber waits for more messages before it
// acknowledges those it has handled (unless half the prefetch window is
// unacknowledged before): what a failed connection leaves unacknowledged
// comes again, which the farm takes without harm.
const ackDelay = 10 * time.Millisecond

// warnUnbounded warns, once for the Bus's queue, that queue was found
// with other arguments (e), and so without the byte bound.
func (b *Bus) warnUnbounded(queue string, e *amqp.Error) {
	b.qmu.Lock()
	warned := b.unbounded[queue]
	b.unbounded[queue] = true
	b.qmu.Unlock()
	if !warned {
		b.warn("amqpbus: the subscriber's queue exists with other arguments (declared without x-max-length-bytes): consuming it as it is, with no byte bound until it is gone",
			"queue", queue, "queue_bytes", b.opts.QueueBytes, "broker", e.Reason)
	}
}

// mayHoldFull reports whether a queue of n messages, each no longer than
// transport.MaxMessageSize, may be full by its byte bound (see
// fullByBytes).
func (b *Bus) mayHoldFull(n int) bool {
	return n > 0 && int64(n)*transport.MaxMessageSize > b.opts.QueueBytes-transport.MaxMessageSize
}

// A backlog is what a subscription read from its queue, and
// acknowledged, before it reported itself up (see readBacklog).
type backlog struct {
	msgs  [][]byte // the messages to deliver once up, in order
	n     int      // how many were read, those too long to deliver included
	bytes int64    // the bytes of the n
}

// readBacklog reads the first n messages of the queue from deliveries, the
// ones it held when the subscriber came back, into held (which may hold
// what an attempt that failed read before), and reports whether they leave
// no room under Options.QueueBytes for a message of
// transport.MaxMessageSize: then the broker may have dropped the oldest of
// what was published meanwhile, as a queue of QueueLength messages may
// have. The declaration does not tell a queue's bytes, so the messages
// must be read; readBacklog stops once their bytes are over the mark.
//
// It acknowledges what it reads, in groups as the subscription does, and
// keeps it to be delivered once the state is reported. Reading the
// messages unacknowledged and giving them back to the queue would not
// do: the broker counts only its ready messages against the queue's
// bounds, so it takes what is published while the backlog is held, and
// when the backlog comes back it drops the oldest of it to get under them,
// a loss after the measure that found none. ended returns the reason
// deliveries closed; guard is the frameGuard of the connection, which
// knows the sizes of the messages too long to read.
func (b *Bus) readBacklog(ctx context.Context, deliveries <-chan amqp.Delivery, n int, held *backlog, guard *frameGuard, ended func() error) (bool, error) {
	mark := b.opts.QueueBytes - transport.MaxMessageSize
	unacked := 0
	var last amqp.Delivery
	for i := 0; i < n && held.bytes <= mark; i++ {
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case d, ok := <-deliveries:
			if !ok {
				return false, ended()
			}
			if ctx.Err() != nil {
				return false, ctx.Err()
			}
			held.n++
			if size, ok := guard.cut(d.DeliveryTag); ok && len(d.Body) == 0 {
				// Too long to deliver: the guard did not read it.
				held.bytes += int64(min(size, 1<<62))
			} else if len(d.Body) > 0 {
				held.bytes += int64(len(d.Body))
				held.msgs = append(held.msgs, d.Body)
			}
			unacked++
			last = d
			if unacked >= max(b.opts.Prefetch/2, 1) {
				if err := d.Ack(true); err != nil {
					return false, b.errorf("acknowledging", err)
				}
				unacked = 0
			}
		}
	}
	if unacked > 0 {
		if err := last.Ack(true); err != nil {
			return false, b.errorf("acknowledging", err)
		}
	}
	return held.bytes > mark, nil
}

var (
	_ transport.Bus           = (*Bus)(nil)
	_ transport.MessageKeeper = (*Bus)(nil)
)
