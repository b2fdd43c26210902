package farm

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/session"
)

// A Mode selects how sessions reach the other nodes.
type Mode uint8

const (
	// Broadcast publishes every new session to every node (and writes it
	// to the store, if there is one, for nodes that join late or missed a
	// message). Resumption stays local everywhere; each new session costs
	// one delivery per node and one copy in every node's memory. The
	// default, for farms of up to a few dozen nodes.
	Broadcast Mode = iota
	// StoreOnly writes each new session to the store only; a node looks a
	// session up there the first time a client presents it. One write and
	// at most one read per session per node, for large farms on a sharded
	// store. Revocations are broadcast in both modes.
	StoreOnly
)

// String returns "broadcast" or "store-only", as ParseMode reads them.
func (m Mode) String() string {
	switch m {
	case Broadcast:
		return "broadcast"
	case StoreOnly:
		return "store-only"
	}
	return fmt.Sprintf("Mode(%d)", uint8(m))
}

// ParseMode parses "broadcast" or "store-only".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "broadcast", "":
		return Broadcast, nil
	case "store-only", "storeonly", "store":
		return StoreOnly, nil
	}
	return 0, fmt.Errorf("farm: unknown mode %q (want broadcast or store-only)", s)
}

// Defaults for the fields of Config (each field's comment states its own).
const (
	defaultLookupTimeout       = 250 * time.Millisecond
	defaultWriteThroughTimeout = 250 * time.Millisecond
	defaultQueueSize           = 16384
	defaultBatchSize           = 256
	defaultMaxAge              = 30 * time.Second
	defaultMaxSkew             = 5 * time.Second
	defaultOpTimeout           = 2 * time.Second
	defaultHealInterval        = 30 * time.Second
	defaultBreakerThreshold    = 5
	defaultBreakerCooldown     = 5 * time.Second

	// defaultCarryFlushWindow is the FlushWindow of a node with
	// CarrySessions that sets none (see docs/performance.md, sixteenth
	// and twenty-seventh passes, for the measurements that chose it: in
	// the farm benchmark's TLS 1.3 farm, 40ms batched about 15 sessions a
	// message where 10ms batched 5, and 80ms about 30, for some 45µs of
	// node CPU and 9µs of Redis CPU less per handshake than 40ms; 100ms
	// saved no more node CPU and did not raise the handshake rate).
	defaultCarryFlushWindow = 80 * time.Millisecond

	// defaultMaxDeliveryLag is the default of Config.MaxDeliveryLag:
	// five of redisbus's marks (one each 100ms), so that a node under
	// load, whose subscription's goroutine runs late, still takes
	// carried copies and resumes its sessions without asking the store,
	// and a revocation waits half a second more.
	defaultMaxDeliveryLag = 500 * time.Millisecond
)

// MaxFlushWindow is the longest Config.FlushWindow Join accepts: a new
// session reaches peers and the store up to the window late, and a client
// resuming it elsewhere meanwhile may get a full handshake.
const MaxFlushWindow = 100 * time.Millisecond

// A Config joins a session cache to a farm. Farm, Secrets, Cache and Bus are
// required; zero values elsewhere mean the defaults.
type Config struct {
	// Farm names the farm. Nodes share only with nodes of the same name and
	// secret; keys in the store and the bus channel are scoped by it.
	Farm string

	// NodeName names this node in logs (default: the host name). Messages
	// carry a random instance ID instead, so two nodes with one name still
	// work.
	NodeName string

	// Secrets are the farm's secrets (see LoadSecrets): the first seals,
	// all open. Join installs the session ID keys derived from them in Cache.
	Secrets []Secret

	// Cache is the local session cache.
	Cache *session.Cache

	// Bus carries messages between nodes.
	Bus transport.Bus

	// Records, if set, holds each session until it expires, for lookups
	// on a miss. Without it, a node that missed a message, or joined late,
	// cannot resume what it missed.
	Records transport.RecordStore

	// Coord holds the revocations until they lapse, and the ticket key
	// lease and key set (Node.RotateTicketKeys). It is required with
	// Records.
	Coord transport.Coordinator

	// Store, if set, is used as Records and as Coord where those are nil:
	// the usual way to give the farm one transport for both.
	Store transport.Store

	// Mode is Broadcast (default) or StoreOnly, which needs Records.
	Mode Mode

	// WriteThrough makes a client reconnecting at once to another node
	// resume, by waiting where the session is needed: the handshake issuing
	// a ticket does not wait (the store write and the publish go out at
	// once, as without it), but this node, presented an ID it does not hold
	// that is young — issued less than WriteThroughTimeout (default 250ms)
	// ago, as the ID itself says (session.Cache.IssuedAt) — waits for it,
	// within LookupTimeout: in broadcast mode until the bus brings it, then
	// one store read; in store-only mode (or while the bus is down) by
	// reading the store again until it is there or the ID is no longer
	// young. A missing ID that is not young is a miss at once. It needs
	// Records. What it does not give: a session whose issuing node dies
	// before its write reaches the farm (normally within milliseconds) is
	// lost, and the client waits out the window and gets a full handshake.
	//
	// After BreakerThreshold (default 5) store failures in a row (lookups),
	// handshakes stop looking sessions up in the store for BreakerCooldown
	// (default 5s); then one handshake tries again.
	WriteThrough        bool
	WriteThroughTimeout time.Duration
	BreakerThreshold    int
	BreakerCooldown     time.Duration

	// LookupTimeout bounds a store lookup on a cache miss, during a
	// handshake (default 250ms).
	LookupTimeout time.Duration

	// QueueSize bounds the sessions and revocations waiting to be
	// published (default 16384); when full, the oldest is dropped and
	// counted.
	QueueSize int
	// BatchSize is the most items published as one batch (default 256).
	BatchSize int

	// FlushWindow lets the publisher hold a new session for up to this
	// long after it was queued, so that the new sessions queued meanwhile
	// are published and stored in the same batch (up to BatchSize) instead
	// of each on its own: fewer, larger messages, at the cost of peers and
	// the store learning of a new session up to FlushWindow later. The
	// grace cut of the parent a resumed handshake's session came from
	// waits with it. Anything else queued (a retirement, a released claim,
	// a backlog kept after a failure) is sent at once with whatever waits,
	// and so is everything when the node closes. Zero (the default) holds
	// nothing. Join refuses a negative window, one longer than
	// MaxFlushWindow (100ms), one longer than half of the cache's
	// ResumeGrace and, with WriteThrough, one longer than half of
	// WriteThroughTimeout or of LookupTimeout: a node waiting for a young
	// session it lacks waits for the window too.
	FlushWindow time.Duration

	// LazyPeers keeps the sessions that peers broadcast as they arrive
	// (authenticated and decrypted, not decoded) and decodes and inserts one
	// into the cache only when a client presents it here. With random
	// balancing over N nodes a node serves about one in N of the sessions
	// it is sent, so this saves most of the work of receiving; but peers'
	// sessions then reach the cache, and its hooks, only when used.
	// PendingSize bounds how many are kept (default 65536); the oldest go
	// first, and a client presenting one that went is served from the
	// store, if there is one.
	LazyPeers   bool
	PendingSize int

	// CarrySessions makes the node issue, while it reaches the farm,
	// tickets that carry their session (see session.Cache.SetCarry):
	// after the session's ID, the session sealed under the farm's ticket
	// keys. A node presented such a ticket for a young ID it does not hold
	// resumes the carried copy at once, as if the issuer's broadcast copy
	// had just arrived (with every check that copy would pass), instead
	// of waiting for the bus. It takes effect only with farm-wide ticket
	// keys (RotateTicketKeys), in broadcast mode, with WriteThrough, and
	// never for a single-use cache; it is off while the node cannot reach
	// the farm. Tickets grow by the sealed session (a few hundred bytes), and
	// each new session costs one more ticket encryption. A carried ticket
	// holds the session's secrets under the ticket keys, as a stateless
	// ticket does: whoever records it and later obtains a ticket key still
	// kept can open it, which a bare ID never allows.
	//
	// With CarrySessions (in broadcast mode, with WriteThrough, not single
	// use) and no FlushWindow set, the node batches new sessions over a
	// FlushWindow of 80ms (at most half of WriteThroughTimeout, of
	// LookupTimeout and of the cache's ResumeGrace): a peer presented a
	// young session takes it from the ticket rather than waiting for the
	// message, so the message may wait for others. Retirements and
	// revocations never wait; a resumption's grace cut waits with its
	// child (see FlushWindow). The window
	// applies from Join, also before RotateTicketKeys makes the ticket keys
	// farm-wide (until then nothing is carried, and a peer waits for the
	// window too) and while the node cannot reach the farm.
	CarrySessions bool

	// MaxDeliveryLag bounds how far behind the present the node's bus
	// delivery may be, as the bus marks it (see
	// transport.DeliveryMarker), for the node to resume a session without
	// asking the store. A revocation or retirement a peer publishes
	// reaches a node whose subscription stays up but falls behind only as
	// late as its delivery. So a node whose delivery lags further, or is
	// not marked (its subscription down), takes no carried copy (with
	// CarrySessions: the client's lookup waits for the bus or the store,
	// as without it), and resumes a session it holds, or loads, only once
	// its store shows no revocation of the session's chain (the hit gate:
	// a store read per such handshake, within LookupTimeout; a read that
	// fails means a full handshake, unless the node counts its store
	// unreachable). RevokeSession waits MaxDeliveryLag after the bus
	// carried a revocation before it reports it applied, so that a node
	// within the bound has it by then. A bus that is not a DeliveryMarker
	// (amqpbus) takes no carried copies, and the node issues none and
	// gates no hits. Default 500ms.
	//
	// The bound is a window: a node whose delivery lags by less than it
	// may resume a session retired elsewhere by Node.Consume for as long
	// as the retirement's message takes to reach it. A grace cut made
	// elsewhere, single use (session.Config.SingleUse), 0-RTT's strikes
	// (Node.Strike) and revocation are never in it: where the cache's
	// ResumeGrace less FlushWindow is shorter than the bound (the default
	// grace, 30 s, is not), that is the bound of the node's hits, so that
	// a cut, published as the session resumed and taking effect a grace
	// later, has reached a node that does not ask the store.
	MaxDeliveryLag time.Duration

	// PeerMarkInterval is how often a node whose bus marks its delivery
	// publishes a delivery mark request, with its answers to its peers'
	// (see farm/peermark.go): the bus's own mark orders only what the
	// subscriber's own server holds, not what a server of a cluster has
	// yet to pass on from another, so the node's mark (for
	// MaxDeliveryLag) is also held back to the newest request each live
	// peer answered. A node publishes one message each interval, and
	// receives one from each peer. Zero means a fifth of MaxDeliveryLag
	// (or of the cache's ResumeGrace less FlushWindow, if shorter: the
	// hit gate's bound then), at least 10ms and at most 100ms; negative
	// means none (the bus's own mark alone, as before).
	PeerMarkInterval time.Duration

	// KeepAfterBusGap keeps a node's cached sessions after its bus
	// subscription was down and some of what the farm published meanwhile
	// may be lost, in a farm with no Records. By default such a node drops
	// from its cache (and, with LazyPeers, from what it holds as received)
	// every session it held before the subscription came back: it missed
	// the retirements, grace cuts and revocations made elsewhere meanwhile,
	// and has no store to check its copies against, so it cannot tell
	// which of them the farm still resumes. The drop is local (nothing is
	// published; other nodes keep their copies) and costs the clients of
	// those sessions one full handshake. A bus that keeps what is published
	// while its subscription is down (transport.MessageKeeper: RabbitMQ)
	// has a gap only when it reports one, or when the outage lasted longer
	// than half the cache's session Lifetime (or of MaxAge, if that is
	// longer): retirements, grace cuts and revocations older than that are
	// refused, while those within it are applied late, whatever their
	// age. Over Redis or NATS pub/sub every outage is a gap. Set KeepAfterBusGap where none of that matters more
	// than the handshakes: the copies then stay resumable until they
	// expire, as they did before. With Records the node checks its cache
	// against the store instead, whatever this says.
	KeepAfterBusGap bool

	// TallyInterval is how often the node publishes a tally of the
	// messages it has published (default 1s; negative: never, and the
	// node checks no peer's tallies either). It publishes one more at
	// Close. A bus may lose messages while the subscription stays up (a
	// NATS slow consumer, a broker dropping within a queue), and a node
	// that missed a retirement, a grace cut or a revocation would go on
	// resuming what the farm no longer allows. Nodes count the messages
	// they publish, and the authentic ones they receive from each peer,
	// by the TallyInterval-wide slot of the sender's clock they were
	// sealed in; a tally gives the sender's counts of slots that closed
	// (no publish in flight) an interval or more before, so that
	// messages that took different connections have arrived. Messages
	// found missing are counted (tlsfarm_farm_messages_lost_total) and
	// settled as a gap in the subscription: the node checks its cache
	// against the store or, with no store, drops it (see
	// KeepAfterBusGap), and asks its peers to send again what they hold.
	// A loss is found three to four intervals after the lost message was
	// sealed; what a peer published in the first two intervals after
	// this node first heard it, or after its subscription came back, is
	// not checked. Nodes older than tallies count a tally as rejected
	// (type) and ignore it.
	TallyInterval time.Duration

	// MaxAge is the oldest message accepted from the bus (default 30s);
	// MaxSkew how far in the future (default 5s). Both absorb clock
	// differences between nodes. Messages that only restrict what may
	// resume (retirements, grace cuts, revocations) are taken older, for
	// as long as the sessions they concern may live (the cache's Lifetime,
	// or MaxChainLifetime for revocations, plus MaxSkew); a peer's new
	// session older than MaxAge is not inserted, but the grace cut of its
	// parent it carries is applied. Node.Strike refuses a ticket issued
	// less than MaxSkew after the strike register began (by the store's
	// clock, or the clock of the node that began it). Join makes MaxSkew
	// the cache's bound for stateless tickets issued ahead of its clock,
	// unless the cache's Config set one (session.Config.MaxClockSkew).
	MaxAge, MaxSkew time.Duration

	// OpTimeout bounds each publish and each store batch (default 2s).
	OpTimeout time.Duration

	// HealInterval is how often the node re-reads the revocations in the
	// store, in case it missed a message (default 30s). It also re-reads
	// them each time the bus reconnects. Where the Coordinator is a
	// transport.SetVersioner, a re-read asks for the set's version first
	// and reads the set only if it changed, opening only the revocations
	// the node has not opened before.
	HealInterval time.Duration

	// ProbeInterval is how often the node probes a transport that is a
	// transport.Pinger (default 500ms), and ProbeTimeout how long a probe
	// may wait for its answer (default 800ms). A hung bus or store shows
	// (Node.Connected false) within about their sum.
	ProbeInterval, ProbeTimeout time.Duration

	// NegativeCacheSize bounds the session IDs remembered as missing from
	// the store, and NegativeCacheTTL how long each is remembered
	// (defaults 65536 and 2s): a dead ID presented again within the TTL
	// costs no store lookup. A negative size disables the negative cache.
	NegativeCacheSize int
	NegativeCacheTTL  time.Duration

	// RevocationFile, if set, is where the node keeps the revocations it
	// has applied locally but not yet in the store and on the bus (sealed
	// with the farm secret, mode 0600), and read back by Join, so that a
	// revocation survives a restart of the node during an outage (a kill
	// too): each one is appended to RevocationFile + ".journal" (sealed
	// the same way) and fsynced before RevokeSession returns, and so is
	// the tombstone each is sealed into for the store, before the store
	// may hold it, so that a restart writes the same one again. The file
	// is rewritten whole, the journal started again with those
	// tombstones, by Join, by Close, and when the journal holds about
	// three times what is pending; both are removed once nothing is. A
	// node older than the journal reads the file alone; one older than
	// its tombstones reads what Close leaves as the file alone too.
	//
	// Beside it, in RevocationFile + ".lifecycle" (sealed the same way),
	// the node keeps the retirements and grace cuts it made that did not
	// reach the farm because a write failed: written at most once a second
	// while there are any, and by Close; removed once they are written and
	// published. Join reads it back, drops what has expired, applies the
	// rest locally at once — this node then resumes none of those sessions,
	// whether from its cache, the store or a peer's copy — and writes and
	// publishes them when the transport works. Join fails if either file
	// does not open under the farm's secrets or is malformed; removing the
	// file starts the node without it.
	//
	// In RevocationFile + ".sent" (sealed the same way) the node keeps the
	// retirements and grace cuts it made and sent, the last QueueSize of
	// them until their sessions' life ends, so that after a restart it
	// still sends them again when a peer asks (after the peer's bus gap,
	// or before it writes its sessions back to a store that lost its
	// data): what it makes is appended, sealed, to RevocationFile +
	// ".sent.journal" within about a second (so that a node killed
	// without Close still re-sends it after a restart), the ".sent" file
	// is rewritten from time to time and by Close, and both are removed
	// once none is left within its session's life. Join reads them back;
	// one that does not open or is malformed is logged and ignored, since
	// what it held reached the farm.
	//
	// In RevocationFile + ".ids" (sealed the same way) the node keeps the
	// revocations by session ID (see RevokeRecorded) that have not reached
	// the store and the bus yet: rewritten and fsynced whenever they
	// change, before RevokeSession returns, and removed once none is left.
	// Join queues them again; it fails if the file does not open.
	RevocationFile string

	// FallbackTicketLifetime is the lifetime of the stateless tickets a
	// node issues instead of cached sessions while it cannot reach the
	// farm (default 5m; negative: never). It takes effect only with
	// farm-wide ticket keys (RotateTicketKeys), and never for a single-use
	// cache: see session.Cache.SetTicketFallback.
	FallbackTicketLifetime time.Duration

	// Logger receives the node's log lines (default slog.Default()). No key
	// or session secret is ever logged.
	Logger *slog.Logger

	// Now returns the current time (default time.Now).
	Now func() time.Time

	// longWindow lets the tests set a FlushWindow beyond MaxFlushWindow.
	longWindow bool
}

func (cfg *Config) setDefaults() error {
	switch {
	case cfg.Farm == "" || len(cfg.Farm) > maxFarmName:
		return fmt.Errorf("farm: Config.Farm must be 1 to %d bytes", maxFarmName)
	case cfg.Cache == nil:
		return errors.New("farm: Config.Cache is required")
	case cfg.Bus == nil:
		return errors.New("farm: Config.Bus is required")
	}
	if cfg.Store != nil {
		if cfg.Records == nil {
			cfg.Records = cfg.Store
		}
		if cfg.Coord == nil {
			cfg.Coord = cfg.Store
		}
	}
	switch {
	case cfg.Records != nil && cfg.Coord == nil:
		return errors.New("farm: Config.Records needs Config.Coord, for revocations")
	case cfg.Mode == StoreOnly && cfg.Records == nil:
		return errors.New("farm: store-only mode needs a Store")
	case cfg.WriteThrough && cfg.Records == nil:
		return errors.New("farm: write-through needs a Store")
	}
	if cfg.NodeName == "" {
		cfg.NodeName, _ = os.Hostname()
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.LookupTimeout, defaultLookupTimeout)
	def(&cfg.WriteThroughTimeout, defaultWriteThroughTimeout)
	def(&cfg.MaxAge, defaultMaxAge)
	def(&cfg.MaxSkew, defaultMaxSkew)
	def(&cfg.OpTimeout, defaultOpTimeout)
	def(&cfg.HealInterval, defaultHealInterval)
	def(&cfg.BreakerCooldown, defaultBreakerCooldown)
	if cfg.FallbackTicketLifetime == 0 {
		cfg.FallbackTicketLifetime = defaultFallbackTicketLifetime
	}
	if cfg.BreakerThreshold <= 0 {
		cfg.BreakerThreshold = defaultBreakerThreshold
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = defaultQueueSize
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = defaultBatchSize
	}
	if cfg.FlushWindow == 0 && cfg.CarrySessions && cfg.Mode == Broadcast && cfg.WriteThrough && !cfg.Cache.Config().SingleUse {
		// Peers take young sessions from their tickets: the publisher
		// may batch (see CarrySessions).
		cfg.FlushWindow = carryFlushWindow(cfg.WriteThroughTimeout, cfg.LookupTimeout, cfg.Cache.Config().ResumeGrace)
	}
	if err := cfg.checkFlushWindow(); err != nil {
		return err
	}
	if cfg.PendingSize <= 0 {
		cfg.PendingSize = defaultPendingSize
	}
	if cfg.MaxDeliveryLag < 0 {
		return fmt.Errorf("farm: Config.MaxDeliveryLag %v is negative", cfg.MaxDeliveryLag)
	}
	def(&cfg.MaxDeliveryLag, defaultMaxDeliveryLag)
	def(&cfg.ProbeInterval, defaultProbeInterval)
	if cfg.TallyInterval == 0 {
		cfg.TallyInterval = defaultTallyInterval
	}
	def(&cfg.ProbeTimeout, defaultProbeTimeout)
	def(&cfg.NegativeCacheTTL, defaultNegativeCacheTTL)
	if cfg.NegativeCacheSize == 0 {
		cfg.NegativeCacheSize = defaultNegativeCacheSize
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return nil
}

// carryFlushWindow is the FlushWindow of a node with CarrySessions that
// sets none: defaultCarryFlushWindow, or less where the bounds
// checkFlushWindow puts on a window (half of the write-through and lookup
// timeouts, half of a grace that cuts) are shorter.
func carryFlushWindow(writeThrough, lookup, grace time.Duration) time.Duration {
	w := min(defaultCarryFlushWindow, writeThrough/2, lookup/2)
	if grace > 0 {
		w = min(w, grace/2)
	}
	return w
}

// checkFlushWindow refuses a FlushWindow that is negative or long enough
// to delay what peers learn past what the farm tolerates (see
// Config.FlushWindow). It runs after the defaults are set.
func (cfg *Config) checkFlushWindow() error {
	w := cfg.FlushWindow
	switch {
	case w < 0:
		return fmt.Errorf("farm: Config.FlushWindow %v is negative", w)
	case cfg.longWindow:
	case w > MaxFlushWindow:
		return fmt.Errorf("farm: Config.FlushWindow %v is longer than %v: new sessions would reach peers and the store that much later, and clients resuming them elsewhere meanwhile would get full handshakes", w, MaxFlushWindow)
	case cfg.WriteThrough && 2*w > cfg.WriteThroughTimeout:
		return fmt.Errorf("farm: Config.FlushWindow %v is longer than half of WriteThroughTimeout (%v): a peer presented a young session waits for the window too, and takes it for lost once it is no longer young", w, cfg.WriteThroughTimeout)
	case cfg.Cache != nil && cfg.Cache.Config().ResumeGrace > 0 && 2*w > cfg.Cache.Config().ResumeGrace:
		return fmt.Errorf("farm: Config.FlushWindow %v is longer than half of the cache's ResumeGrace (%v): a resumed session's grace cut waits with its child, and must reach peers and the store well before the grace is over", w, cfg.Cache.Config().ResumeGrace)
	case cfg.WriteThrough && 2*w > cfg.LookupTimeout:
		return fmt.Errorf("farm: Config.FlushWindow %v is longer than half of LookupTimeout (%v): a peer presented a young session waits for the window too, within LookupTimeout", w, cfg.LookupTimeout)
	}
	return nil
}
