// Package transport defines what the farm needs from the systems that carry
// its messages and hold its records: a Bus, a RecordStore and a Coordinator,
// and the optional interfaces a transport may also implement (Batcher,
// UnorderedBatcher, RecordTaker, RecordSwapper, RecordGetter, SetVersioner, Pinger,
// MessageLimiter, MessageKeeper). A Store is a RecordStore and a Coordinator in one value, as
// Redis and NATS provide.
//
// It stands to package farm as database/sql/driver stands to database/sql:
// transports (farm/redisbus, farm/natsbus, farm/amqpbus) implement these
// interfaces, and a program hands their values to farm.Config. The
// conformance suite in farm/farmtest (TestBus, TestStore) checks a
// transport against a real server. Everything a transport sees is a sealed envelope:
// opaque bytes under relative keys.
package transport

import (
	"context"
	"errors"
	"time"
)

// ErrNotFound is returned by RecordStore.GetRecord, RecordTaker.TakeRecord
// and Coordinator.Get for a key that does not exist.
var ErrNotFound = errors.New("farm: not found")

// ErrUnconfirmed is wrapped by the error of a write that the store applied
// but could not confirm will last (such as a Redis write that fewer
// replicas than asked acknowledged: a failover now could undo it). A
// caller that needs the write to last treats it as failed and writes
// again; one that only needs it made (a write-back to a store that lost
// its data) may go on.
var ErrUnconfirmed = errors.New("transport: write applied but not confirmed")

// ErrNotConnected is wrapped by the error of a request that a transport
// could not send because it has no connection to its server (it is
// reconnecting, or closed): as with a refused connection, the server
// could not be reached, and gave no answer.
var ErrNotConnected = errors.New("transport: not connected to the server")

// A Bus carries messages between the nodes of one farm. Every message
// published by any node is delivered to every other node subscribed, and
// may be delivered to the sender too (the farm drops its own). Implementations live in sub-packages
// of farm (redisbus, natsbus, amqpbus); the farm never imports a client
// library.
//
// Messages are sealed envelopes: a Bus sees only opaque bytes and needs no
// security of its own beyond what its operator wants.
type Bus interface {
	// Publish sends msgs to the farm, in order, as one batch where the
	// transport allows (one pipeline, one flush). It returns when the
	// transport has accepted them or ctx is done.
	Publish(ctx context.Context, msgs ...[]byte) error

	// Subscribe delivers the farm's messages to deliver until ctx is done,
	// then returns ctx.Err(). It reconnects and resubscribes on its own
	// after failures, with backoff, and reports each change of state to
	// state: up is true once a subscription is in place, false with the
	// error when it is lost (ErrMessagesDropped, wrapped, for a gap in a
	// subscription that stays in place). With up true, the error is nil, but from a
	// MessageKeeper, which says with it whether messages were lost while
	// it was down. deliver and state are called from one goroutine;
	// deliver may keep msg.
	Subscribe(ctx context.Context, deliver func(msg []byte), state func(up bool, err error)) error
}

// An Item is one session record written by RecordStore.PutRecords.
type Item struct {
	Key   string        // relative to the farm's scope, as in GetRecord
	Value []byte        // a sealed envelope
	TTL   time.Duration // how long the store keeps it; > 0

	// IfPresent makes the write a shortening replacement: it takes place
	// only if a record is at Key when it is applied and that record would
	// outlive TTL (or has no TTL), and otherwise writes nothing and is not
	// an error. The farm writes a grace cut so: a cut shortens a record
	// and must never bring back one that a peer deleted meanwhile (a
	// retirement that crossed it, or one made while this node was cut
	// off), nor lengthen one that a peer's cut, made sooner, ended
	// sooner. Every RecordStore must honour it (Redis: a script that reads
	// PTTL and SETs). One that finds no record leaves a cut mark at Key
	// instead, for TTL, which no read sees and only a Late or NoLonger
	// write applies (a store may keep the shorter of two marks).
	IfPresent bool

	// Life, for an IfPresent write, is how long the record could have
	// lived uncut: the session's remaining natural life, the longest a
	// late write of it could keep it. A cut leaves, for Life, a
	// lapsed-cut mark, which no read sees and which outlives the cut: a
	// Late or NoLonger write that lands once the cut lapsed (held in
	// flight past the grace) then writes nothing, where it would put the
	// session back whole, past its grace, for a writer that may never
	// hear of the cut again. It does so whether or not it finds the
	// record: a first write reported failed may have landed, and the
	// writer then writes the session again, as a late write, read whole
	// before it heard of the cut. A record the cut shortened is, while it
	// lasts, the cut itself: a Late write that finds it (or a record a
	// late write put in a cut mark's place) leaves it as it is. A store
	// may keep the later-ending of two lapsed-cut marks. If Life is no
	// longer than TTL, the cut leaves no such mark. Ignored without
	// IfPresent.
	Life time.Duration

	// Late makes the write a session's late write, one made again after a
	// failed write of it: if a cut mark (see IfPresent) lies at Key, the
	// write puts there, in its place, the mark's value for what is left of
	// the mark's TTL, when that is shorter than TTL; if a retirement mark
	// (see Retire) lies there, or a cut's lapsed-cut mark (see Life) without
	// its cut mark, it writes nothing (where the cut found the record, the
	// record, shortened, is the cut, and stays); else it writes as a plain
	// write does. A peer that resumed the session before its first write
	// landed cut it to its grace where the store had no record yet, and the
	// writer, which read the session whole before it heard of the cut, must
	// not put it back whole, even for the round trip until it writes the cut
	// again. The farm writes so, too, a session's first write that the bus
	// may overtake (broadcast mode, the store on a path of its own or
	// written concurrently with the publish, a Redis Cluster, a carried
	// ticket): the first write may land after a peer's cut, and its writer
	// may hear of the cut only after the mark lapsed. Only those writes pay
	// for the check (Redis: a script that reads the marks and SETs; NATS: a
	// create, one round trip where no mark is there); a first write made in
	// one round trip with its publish, on a store that applies it before the
	// publish, stays a plain write. Ignored with IfPresent or NoLonger.
	Late bool

	// Retire makes the write a retirement: it deletes the record at Key
	// (Value is ignored) and, where it finds none, leaves a retirement mark
	// at Key for TTL, which no read sees and a Late or NoLonger write
	// honours by writing nothing (a store may leave the mark where it found
	// a record too, and may keep the later-ending of two marks). A peer that
	// retired a session (a replaced child, a cut to the past) before the
	// session's first write landed found no record to delete, and the
	// writer, which read the session whole before it heard of the
	// retirement, must not put it back, even for the round trip until it
	// deletes it again. A cut (IfPresent) that finds a retirement mark
	// leaves it as it is. Only retirements that find no record pay for the
	// mark where the store can tell (Redis: a script that DELs and SETs the
	// mark only if the DEL found nothing); a farm deletes a record it took
	// itself (a consumption) with DeleteRecords. IfPresent, Late and
	// NoLonger are ignored with it.
	Retire bool

	// Taken marks a Retire of a record the writer took itself
	// (RecordTaker.TakeRecord: a consumption, a single-use resumption).
	// A RecordTaker's take leaves the retirement mark, for the record's
	// remaining life, in its atomic step, so that a late write of the
	// session writes nothing where it would put the taken session back
	// for a second taker; the retirement that follows must not lift it. A
	// store whose deletion leaves the mark as it is (Redis: the mark has
	// a key of its own) may write a Taken retirement as a plain deletion;
	// one whose deletion replaces the mark (NATS: a purge) writes it as
	// any Retire. Ignored without Retire.
	Taken bool

	// NoLonger makes the write one that never lengthens: it takes place
	// if no record is at Key when it is applied, or if the record there
	// would outlive TTL (or has no TTL), and otherwise writes nothing and
	// is not an error. It is IfPresent without the presence: with both
	// set, IfPresent rules (an absent key stays absent). Where no record
	// is, it honours the marks as a Late write does: it writes nothing
	// over a retirement mark (see Retire) or a lapsed-cut mark (see Life)
	// whose cut lapsed, and the cut over a cut mark that ends sooner. The
	// farm writes its sessions back to a store that lost its data so: a
	// node that missed a peer's grace cut, or its retirement, holds the
	// session whole, and must not lengthen the record that a node which
	// knew the cut wrote back before it, nor bring back whole a session
	// that the peer cut or retired after the loss, in the emptied store,
	// where it found no record. Every RecordStore must honour it (Redis:
	// a script that reads the record's PTTL and the marks, and SETs).
	NoLonger bool
}

// A RecordStore holds the farm's session records: sealed values under keys
// of their own, each written with a TTL, read and deleted one key at a
// time. No operation spans two keys, so an implementation may spread the
// records over every shard of a cluster. Keys are relative: an
// implementation scopes them to the farm. Values are sealed envelopes.
type RecordStore interface {
	// PutRecords writes every item, each with its own TTL, as one batch
	// where the store allows (a pipeline, grouped per shard on a cluster).
	PutRecords(ctx context.Context, items ...Item) error

	// GetRecord returns the record at key, or ErrNotFound.
	GetRecord(ctx context.Context, key string) ([]byte, error)

	// DeleteRecords removes the records at keys; absent keys are not an
	// error.
	DeleteRecords(ctx context.Context, keys ...string) error
}

// A Coordinator holds the few keys through which the nodes of a farm agree:
// the ticket key lease and key set, and the revocation tombstones. It
// offers the atomic operations that a lease and a fenced update need. Its
// keys are relative and few; an implementation keeps them together (for
// Redis, under the farm's hash tag, so that they live in one slot of a
// cluster). They are a namespace of their own: a coordination key never
// names a session record. Values are sealed envelopes.
type Coordinator interface {
	// Get returns the value of key, or ErrNotFound.
	Get(ctx context.Context, key string) ([]byte, error)

	// SetNX sets key to value with ttl if key does not exist, and reports
	// whether it did.
	SetNX(ctx context.Context, key string, value []byte, ttl time.Duration) (bool, error)

	// CompareAndSwap sets key to new (with ttl; 0 for none) if its current
	// value is old, or if old is nil and key does not exist, and reports
	// whether it did. It is atomic with respect to every other operation on
	// key.
	CompareAndSwap(ctx context.Context, key string, old, new []byte, ttl time.Duration) (bool, error)

	// SetAdd adds member to the set at key, to be dropped once until has
	// passed.
	SetAdd(ctx context.Context, key string, member []byte, until time.Time) error

	// SetMembers returns the members of the set at key whose time has not
	// passed (by the store's clock), and drops the others. It returns at
	// most MaxSetMembers of them, and leaves out any longer than
	// MaxSetMemberSize.
	SetMembers(ctx context.Context, key string) ([][]byte, error)

	// Time returns the store's clock, so that nodes can agree on time
	// without trusting their own clocks alone.
	Time(ctx context.Context) (time.Time, error)
}

// A SetVersioner is a Coordinator that can tell, in one short request,
// whether a set has had members added since it was last read: a node then
// reads the farm's revocations whole only when they changed, instead of at
// every heal. A Coordinator that is not a SetVersioner is read whole each
// time.
type SetVersioner interface {
	// SetVersion returns the version of the set at key: a value that each
	// Coordinator.SetAdd to the set replaces (atomically with the add, or
	// after it, before SetAdd returns nil) by one it never held before, a
	// random one, so that a store which lost the set, or a replica that
	// missed some adds, never returns a version a reader saw with other
	// members. Two reads that return the same version saw the same members
	// added (some may have lapsed in between). A set never added to, or one
	// the store no longer holds, has the version nil (it has no member that
	// has not lapsed).
	SetVersion(ctx context.Context, key string) ([]byte, error)
}

// A Store is a key-value store shared by the nodes of one farm that does
// both jobs: it holds the session records and coordinates the farm. The
// transports redisbus and natsbus implement it; farm.Config.Store takes
// one value for both farm.Config.Records and farm.Config.Coord.
type Store interface {
	RecordStore
	Coordinator
}

// A Batcher is a transport that is both the farm's Bus and its RecordStore
// and can write records, delete records and publish messages in one round
// trip. The farm uses it, when farm.Config.Bus and farm.Config.Records are the same
// value, for batches without revocations: new sessions, grace cuts and
// retirements, the bulk of its traffic. Revocations take the general path.
type Batcher interface {
	// PutAndPublish writes every item (as RecordStore.PutRecords does),
	// then deletes the records at dels (as RecordStore.DeleteRecords
	// does), then publishes msgs (as Bus.Publish does), in one batch. It
	// fails as a whole.
	PutAndPublish(ctx context.Context, items []Item, dels []string, msgs [][]byte) error
}

// An UnorderedBatcher is a Batcher whose PutAndPublish may deliver its
// messages to peers before its records are written: a Redis Cluster sends
// each shard its part of the batch at once, and a record rarely lies on
// the shard of the farm's channel. MayPublishFirst reports whether it may.
// A Batcher that is not an UnorderedBatcher, or whose MayPublishFirst
// returns false, applies its writes before its messages can be heard (one
// server, one connection, in order). A peer may then resume a new session
// before the store has it, and its grace cut, or its retirement, find no
// record: the farm remembers the new sessions it writes through such a
// Batcher, and writes again the restrictions it hears of them (as it does
// with a store on a path of its own).
type UnorderedBatcher interface {
	Batcher
	MayPublishFirst() bool
}

// A RecordTaker is a RecordStore that can consume a record atomically. The
// farm's exactly-once operations (farm.Node.Consume, farm.Node.ConsumeToken,
// and single use through the store) need it: with a RecordStore that is not
// a RecordTaker they fail with farm.ErrNoConsume, and a single-use session then
// never resumes across the farm (a full handshake, never a replay).
type RecordTaker interface {
	// TakeRecord reads and deletes the record at key in one atomic step
	// and returns its value: of concurrent calls for one key, exactly one
	// gets the value; the others, and later ones, get ErrNotFound.
	TakeRecord(ctx context.Context, key string) ([]byte, error)

	// AddRecord writes item only if no record is at its key, and reports
	// whether it did.
	AddRecord(ctx context.Context, item Item) (bool, error)
}

// A RecordGetter is a RecordStore that can read many records in one round
// trip (one per shard on a cluster). A node uses it to check its cached
// sessions against the store after its bus subscription was down (see
// farm.Node's reconcile); with a RecordStore that is not a RecordGetter it
// reads them with RecordStore.GetRecord, a few at a time.
type RecordGetter interface {
	// GetRecords returns the records at keys, in the order of keys: nil
	// where a key has none. It fails as a whole.
	GetRecords(ctx context.Context, keys ...string) ([][]byte, error)
}

// A RecordSwapper is a RecordStore that can replace a record and return
// the value it replaced in one atomic step. In store-only mode the farm
// records each resumed session's live child through it, where the store
// offers it (one round trip instead of RecordTaker.TakeRecord and
// RecordStore.PutRecords).
type RecordSwapper interface {
	// SwapRecord writes item and returns the value it replaced, or
	// ErrNotFound if there was none.
	SwapRecord(ctx context.Context, item Item) ([]byte, error)
}

// A Striker is a RecordStore that keeps the farm's 0-RTT strike register
// (farm.Node.Strike) itself, so that a register the store lost — a server
// restarted empty, one shard of a cluster that lost its data alone — is
// noticed by the strike that follows, never by a later check. Without it,
// the farm keeps the register with RecordTaker.AddRecord and a marker
// read through the Coordinator (two operations, not one).
type Striker interface {
	// StrikeRecord does, as one atomic step: if the group's marker record
	// is missing, it writes one holding the store's clock, the time at
	// which the group's register began, with markerTTL (a marker with
	// less than half of markerTTL left gets markerTTL again); if the
	// marker's time is after since, it writes nothing more and
	// returns ErrRegisterNewer; otherwise it writes item if no record is
	// at its key in the group, and reports whether it did. An item with
	// an empty key writes nothing but the marker. The group's marker and
	// its records lie together (in one slot of a cluster), so that a loss
	// of the records is a loss of the marker.
	StrikeRecord(ctx context.Context, group string, item Item, since time.Time, markerTTL time.Duration) (bool, error)
}

// ErrRegisterUnknown is the error a Striker's StrikeRecord returns when the
// store cannot tell whether the register is whole, having forgotten what
// shows it: Redis's script cache, which a restart empties even when the
// data comes back from disk (an RDB snapshot or an AOF older than the
// last writes, a restore from backup), as do a failover and SCRIPT FLUSH.
// Nothing was written. StrikeRecord answers again once
// RegisterRenewer.RenewRegister has made every group's register begin
// anew.
var ErrRegisterUnknown = errors.New("transport: the store cannot tell whether the strike register is whole")

// A RegisterRenewer is a Striker whose StrikeRecord may return
// ErrRegisterUnknown.
type RegisterRenewer interface {
	// RenewRegister makes the register of each of groups begin now: it
	// writes each group's marker with the store's clock and markerTTL (a
	// marker already later than that is left as it is), and from then on
	// StrikeRecord answers for these groups until the store forgets
	// again.
	RenewRegister(ctx context.Context, groups []string, markerTTL time.Duration) error
}

// A RegisterPrimer is a Striker that writes the markers of many groups'
// registers in one round trip, where StrikeRecord would take one for each.
type RegisterPrimer interface {
	// PrimeRegister does for each of groups what StrikeRecord does with
	// an item whose key is empty: it writes the group's marker, with the
	// store's clock and markerTTL, where it is missing (and gives one
	// with less than half of markerTTL left markerTTL again), and strikes
	// nothing. It returns ErrRegisterUnknown if StrikeRecord would have
	// for any of the groups; the markers of the others may then have
	// been written.
	PrimeRegister(ctx context.Context, groups []string, markerTTL time.Duration) error
}

// ErrRegisterNewer is the error Striker.StrikeRecord returns when the
// group's register began after the time given: the store lost its records
// (or never had them) since then, so it cannot tell whether the item's key
// was written before.
var ErrRegisterNewer = errors.New("transport: the strike register began after the ticket was issued")

// MaxMessageSize is the largest envelope a node accepts, from the bus or
// the store: a longer one is refused before anything is allocated for it. A
// node also keeps every message it sends within it, and within the
// transport's own limit (see MessageLimiter), splitting a batch into several
// messages where it must. A transport may drop longer messages unread.
const MaxMessageSize = 1 << 20

// MaxSetMembers bounds what Coordinator.SetMembers returns: a transport
// returns at most this many members of a set (the ones that lapse last,
// where the store orders them), so that a flood of revocations cannot make
// every node read an unbounded set at each heal. A node counts a full
// answer (tlsfarm_farm_tombstones_truncated_total).
const MaxSetMembers = 100000

// MaxSetMemberSize bounds the members Coordinator.SetMembers returns: a
// transport leaves out a longer one, which the farm never writes (its
// members, sealed revocations, are under 150 bytes), so that whatever was
// written to the store, a node reads at most MaxSetMembers times this at
// each heal, not that many values as long as the store allows.
const MaxSetMemberSize = 512

// A MessageLimiter is a Bus or Store that bounds the size of one message
// (or stored value). MaxMessageSize returns that bound in bytes, or 0 while
// it is not known (not connected yet). A node keeps its messages and values
// a little below it (room for what the transport adds), and always within
// the package's MaxMessageSize.
type MessageLimiter interface {
	MaxMessageSize() int
}

// A Pinger is a Bus or Store the node can probe: Ping returns nil once the
// server has answered a trivial request (a PING) and an error if it has not
// by the time ctx ends. A node probes its transport every
// farm.Config.ProbeInterval, so that a hung server (a paused process, a
// partition: nothing resets the connection) is reported within about
// ProbeInterval + ProbeTimeout, instead of when the client library's own
// keepalive gives up. A transport that is not a Pinger is judged by its
// subscription alone.
type Pinger interface {
	Ping(ctx context.Context) error
}

// ErrMessagesLost is the error a MessageKeeper's Subscribe passes to its
// state function, with up true, when it resubscribes after an outage and
// some of the messages published meanwhile may never be delivered (its
// broker dropped them, or the queue that held them). Test it with
// errors.Is: a transport may wrap it with the cause.
var ErrMessagesLost = errors.New("farm: messages published while the subscription was down may be lost")

// ErrMessagesDropped is the error a Bus's Subscribe passes to its state
// function, with up false, for a gap in a subscription that stays in
// place: the transport's client dropped messages that came faster than the
// node handled them (a NATS slow consumer), with the connection up, and up
// is reported again at once. The farm settles the gap as it does an outage
// (what was dropped is lost), but logs such gaps at most once a minute and
// counts them apart (tlsfarm_farm_bus_gaps_total), not as losses and
// connects of the bus. Test it with errors.Is: a transport wraps it with
// its own words.
var ErrMessagesDropped = errors.New("transport: the bus client dropped messages with the subscription up")

// A MessageKeeper is a Bus that can keep the messages published while its
// subscription is down and deliver them once it is back (a RabbitMQ queue
// that outlives its consumer's connection, for one). When KeepsMessages
// returns true, Subscribe's state function tells the farm what an outage
// cost: once the subscription is back, up is true and err is nil only if
// every message published meanwhile will be delivered (in order, after
// those delivered before the outage; some may come twice); err is
// ErrMessagesLost, wrapped or not, if any may be missing. The Bus's first
// subscription, with nothing before it to lose, reports err nil (the farm
// takes an outage before its first subscription for a gap).
//
// A Bus that is not a MessageKeeper, or whose KeepsMessages returns false,
// may lose whatever is published while it is down (pub/sub, as Redis and
// NATS core): the farm takes each of its outages for a gap, and the error
// it reports with up true means nothing.
type MessageKeeper interface {
	KeepsMessages() bool
}

// A DeliveryMarker is a Bus that can tell how far the delivery of its
// running subscription has come, for every publisher at once. A node whose
// subscription stays up while its delivery lags (a client or server
// falling behind, a slow reader) learns of a peer's revocation late; the
// farm takes carried sessions (farm.Config.CarrySessions) only on a node
// whose delivery is known to be recent, which a bus that is not a
// DeliveryMarker cannot show.
//
// DeliveredThrough returns a time t, read from this process's clock with
// time.Now (so with its monotonic reading), such that every message the
// bus's server had taken from any publisher before t has been passed to
// the deliver function of the running Subscribe (which has returned for
// it) or was lost with a subscription whose loss Subscribe reported (its
// state function called with up false). A transport whose client may drop
// messages with the subscription up (a NATS slow consumer) says so: its
// mark does not wait for a dropped message, so it reports the loss as a gap
// (up false, then up true at once) and its mark is zero from the drop until
// then. It returns the zero Time while no
// subscription is up, or before its delivery was first marked. A
// transport marks its delivery often (a round trip on the subscription's
// own connection every tenth of a second, say), so that t stays within a
// few of them of the present while delivery keeps up.
type DeliveryMarker interface {
	DeliveredThrough() time.Time
}

// A ServerTeller is a Bus whose server may be one of several that pass
// the farm's messages on to each other (the servers of a NATS cluster,
// over their routes): a DeliveryMarker's round trip to its own server
// does not order what another server has yet to pass on. ConnectedServer
// returns the ID of the server the bus's connection is on now, the one a
// Publish made now goes to, and "" while it is not connected. The farm
// marks its delivery of each other server's messages by requests its
// peers on that server answer (see farm/peermark.go).
type ServerTeller interface {
	ConnectedServer() string
}

// primaryKey is the key of the context value PrimaryRead sets.
type primaryKey struct{}

// PrimaryRead returns a context under which a store's reads answer with
// what its primary holds (the master of the key, on Redis; the leader of
// the stream, on NATS): a read that decides one of the farm's promises
// (whether a session is revoked, whether the farm's revocations changed,
// whether the store lost its data, and a session lookup's record, which a
// grace cut or a retirement may have shortened or removed) must not take
// a replica's stale answer. A transport that can send reads to replicas
// (redisbus with read_only or route_*, natsbus on a bucket of more than
// one replica) sends a read under this context to the primary instead;
// any other ignores it, and its reads cost nothing more.
func PrimaryRead(ctx context.Context) context.Context {
	if IsPrimaryRead(ctx) {
		return ctx
	}
	return context.WithValue(ctx, primaryKey{}, true)
}

// IsPrimaryRead reports whether ctx asks for reads from the primary (see
// PrimaryRead).
func IsPrimaryRead(ctx context.Context) bool {
	v, _ := ctx.Value(primaryKey{}).(bool)
	return v
}
