package natsbus

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// setMemberKey returns the KV key of member in the set at key: one token
// per member, named by a hash of it, so that listing "_set.<set>.*" finds
// exactly the set's members.
func setMemberKey(key string, member []byte) string {
	h := sha256.Sum256(member)
	return setPrefix + kvKey(key) + "." + hex.EncodeToString(h[:16])
}

// SetAdd implements transport.Coordinator: a set is a group of keys, one per member,
// each holding its time and the member, and expiring a second after it
// where the server allows.
func (t *Transport) SetAdd(ctx context.Context, key string, member []byte, until time.Time) error {
	s, err := t.open(ctx)
	if err != nil {
		return err
	}
	ms := max(until.UnixMilli(), 1)
	// At least a second, also for a member whose time has passed: a TTL
	// of 0 or less would write it with none, for good.
	ttl := max(until.Sub(t.now())+time.Second, time.Second)
	m, opts := t.message(s, setMemberKey(key, member), encodeValue(uint64(ms), member), ttl)
	_, err = t.js.PublishMsg(ctx, m, opts...)
	return t.check(s, "set add", err)
}

// SetMembers implements transport.Coordinator: it reads the set's member keys with one
// watcher, keeps those whose time has not passed by the server's clock
// (Time), up to transport.MaxSetMembers of at most
// transport.MaxSetMemberSize bytes, and purges the lapsed ones on a server
// that does not expire them itself.
func (t *Transport) SetMembers(ctx context.Context, key string) ([][]byte, error) {
	s, err := t.open(ctx)
	if err != nil {
		return nil, err
	}
	now, err := t.Time(ctx)
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := s.kv.Watch(wctx, setPrefix+kvKey(key)+".*", jetstream.IgnoreDeletes())
	if err != nil {
		return nil, t.check(s, "set members", err)
	}
	defer w.Stop()
	var members [][]byte
	var lapsed []string
	for {
		var e jetstream.KeyValueEntry
		select {
		case e = <-w.Updates():
		case <-ctx.Done():
			return nil, fmt.Errorf("natsbus: set members: %w", ctx.Err())
		}
		if e == nil {
			break // the initial values are all in
		}
		until, member, ok := decodeValue(e.Value())
		switch {
		case !ok:
		case int64(until) > now.UnixMilli():
			if len(members) < transport.MaxSetMembers && len(member) <= transport.MaxSetMemberSize {
				members = append(members, member)
			}
		default:
			lapsed = append(lapsed, e.Key())
		}
	}
	if len(lapsed) > 0 && !s.native {
		msgs := make([]*nats.Msg, len(lapsed))
		opts := make([][]jetstream.PublishOpt, len(lapsed))
		for i, k := range lapsed {
			msgs[i], opts[i] = t.purgeMessage(s, k)
		}
		if err := t.publishAll(ctx, msgs, opts); err != nil {
			return nil, t.check(s, "set members", err)
		}
	}
	return members, nil
}
