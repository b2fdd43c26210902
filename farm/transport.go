package farm

import (
	"context"
	"errors"
	"time"
)

// ErrNotFound is returned by Store.Get for a key that does not exist.
var ErrNotFound = errors.New("farm: not found")

// A Bus carries messages between the nodes of one farm. Every message
// published by any node is delivered to every node subscribed, the sender
// included (the farm drops its own). Implementations live in sub-packages
// (redisbus, natsbus, amqpbus); the farm never imports a client library.
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
	// error when it is lost. deliver and state are called from one
	// goroutine; deliver may keep msg.
	Subscribe(ctx context.Context, deliver func(msg []byte), state func(up bool, err error)) error
}

// An Item is one key written by Store.PutMany.
type Item struct {
	Key   string
	Value []byte
	TTL   time.Duration // > 0
}

// A Store is a key-value store shared by the nodes of one farm, with
// expiring keys and the atomic operations that a lease and a fenced update
// need. Keys are relative: an implementation scopes them to the farm (for
// Redis, under one hash tag, so that scripts over several keys work on a
// cluster). Values are sealed envelopes.
type Store interface {
	// PutMany writes every item, each with its own TTL, as one batch where
	// the store allows (a pipeline).
	PutMany(ctx context.Context, items ...Item) error

	// Get returns the value of key, or ErrNotFound.
	Get(ctx context.Context, key string) ([]byte, error)

	// Delete removes keys; absent keys are not an error.
	Delete(ctx context.Context, keys ...string) error

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
	// passed (by the store's clock), and drops the others.
	SetMembers(ctx context.Context, key string) ([][]byte, error)

	// Time returns the store's clock, so that nodes can agree on time
	// without trusting their own clocks alone.
	Time(ctx context.Context) (time.Time, error)
}

// A Batcher is a transport that is both the farm's Bus and its Store and can
// write items and publish messages in one round trip. The farm uses it, when
// Config.Bus and Config.Store are the same value, for batches of new
// sessions; revocations take the general path.
type Batcher interface {
	// PutAndPublish writes every item (as Store.PutMany does) and publishes
	// msgs (as Bus.Publish does) in one batch. It fails as a whole.
	PutAndPublish(ctx context.Context, items []Item, msgs [][]byte) error
}
