package natsbus

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// How the store lays out the farm's keys in the bucket:
//
//	<kvKey(k)>                     farm key k; "s:<hex>" is "s.<hex>"
//	_set.<kvKey(set)>.<hash>       one member of a set (see SetAdd)
//	_setv.<kvKey(set)>             the version of a set (see SetVersion)
//	_clock                         written to read the server's clock
//
// Mapped farm keys never contain "_", so the transport's own keys cannot
// collide with them.
const (
	setPrefix        = "_set."
	setVersionPrefix = "_setv."
	clockKey         = "_clock"
)

// Every value starts with a version byte and eight bytes (big-endian):
// for a farm key, its TTL in milliseconds, counted from the server's
// timestamp on the message (0: none); for a set member, the Unix time in
// milliseconds at which it lapses. The farm's bytes follow.
const (
	valueVersion = 1
	valueHeader  = 9
)

// errTransportClosed fails the writes still waiting for acknowledgments
// when the transport is closed.
var errTransportClosed = errors.New("the transport was closed")

// Header names of the KV protocol.
const (
	hdrOperation = "KV-Operation"
	hdrRollup    = "Nats-Rollup"
	hdrMarker    = "Nats-Marker-Reason"
	hdrCutMark   = "Tlsfarm-Cut-Mark"
	hdrRetired   = "Tlsfarm-Retired"
	hdrWrite     = "Tlsfarm-Write" // the token of the conditional write that wrote the message (see writeToken)
	hdrCutLife   = "Tlsfarm-Cut-Life"
)

// kvKey maps a farm key to a JetStream KV key, which may hold only
// [-/_=.A-Za-z0-9] and uses "." to separate tokens (none empty). Letters,
// digits, "-" and "/" stay as they are; a ":" between two other bytes
// becomes "." (so "s:<hex>" is "s.<hex>", and a farm's sessions are the
// keys "s.*"); every other byte, and a ":" that would leave an empty token,
// becomes "=" and two upper-case hex digits. The empty key is "=". The
// mapping is one to one, and its output never contains "_".
func kvKey(k string) string {
	if k == "" {
		return "="
	}
	var b strings.Builder
	b.Grow(len(k))
	for i := 0; i < len(k); i++ {
		c := k[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '/':
			b.WriteByte(c)
		case c == ':' && i > 0 && i < len(k)-1 && k[i-1] != ':' && k[i+1] != ':':
			b.WriteByte('.')
		default:
			fmt.Fprintf(&b, "=%02X", c)
		}
	}
	return b.String()
}

// Key returns the KV key that holds the farm's key k in the bucket.
func (t *Transport) Key(k string) string { return kvKey(k) }

func encodeValue(n uint64, payload []byte) []byte {
	b := make([]byte, valueHeader+len(payload))
	b[0] = valueVersion
	binary.BigEndian.PutUint64(b[1:], n)
	copy(b[valueHeader:], payload)
	return b
}

func decodeValue(b []byte) (n uint64, payload []byte, ok bool) {
	if len(b) < valueHeader || b[0] != valueVersion {
		return 0, nil, false
	}
	return binary.BigEndian.Uint64(b[1:]), b[valueHeader:], true
}

// ttlMillis returns ttl in whole milliseconds, at least 1 for any positive
// ttl (0 means none).
func ttlMillis(ttl time.Duration) uint64 {
	if ttl <= 0 {
		return 0
	}
	return uint64((ttl + time.Millisecond - 1) / time.Millisecond)
}

// serverTTL rounds ttl up to the whole seconds the server counts in, at
// least one.
func serverTTL(ttl time.Duration) time.Duration {
	return max((ttl+time.Second-1)/time.Second*time.Second, time.Second)
}

// entry is what get found at a key.
type entry struct {
	value   []byte
	rev     uint64    // the subject's last sequence; 0 if it has no message
	present bool      // false for no message, a delete marker, or an expired value
	expires time.Time // when a present value with a TTL lapses; zero if it has none

	// A cut mark (see transport.Item.IfPresent) at an absent key, and
	// when it lapses: the value a late write puts there instead; and when
	// the cut's life (see transport.Item.Life) ends, zero for none. A
	// present value that a cut wrote (or a late write, in a mark's place)
	// has its cut's life too, and no mark.
	mark        []byte
	markExpires time.Time
	lifeExpires time.Time

	// retired says a retirement mark (see transport.Item.Retire) that has
	// not lapsed is at the absent key, or a cut mark, or the cut a late
	// write put in its place, that lapsed within its cut's life (see
	// transport.Item.Life): a late write writes nothing.
	retired bool

	// writer is the token of the conditional write (see writeToken)
	// that wrote the key's last message, if one did.
	writer string
}

// get reads the last message on subj (from the stream's leader under
// transport.PrimaryRead, see lastMsg) and decides whether it is a live
// value: a delete or purge marker, a marker the server left on expiry, and
// a value past its TTL are absent, with the revision to replace them at.
// A value natsbus did not write (no valueVersion header) is present, as
// it is, with no TTL: the frame is not authenticated, so the farm decides
// what the bytes are worth (they do not open, and are counted as
// rejected); neither an error, which would carry the key (a session ID)
// and count as a failing store, nor an absence, which the farm would take
// for a deletion. A cut mark (a delete marker that carries a cut which
// found no record, see replaceIn) is absent, with its value while it has
// not lapsed; so is a retirement mark (a purge that carries a
// retirement, see retireMessage), retired while it has not lapsed.
func (t *Transport) get(ctx context.Context, s *bucketState, subj string) (entry, error) {
	return t.getFrom(ctx, s, subj, transport.IsPrimaryRead(ctx))
}

// getFrom is get, reading as under transport.PrimaryRead if primary is
// true (see lastMsgFrom).
func (t *Transport) getFrom(ctx context.Context, s *bucketState, subj string, primary bool) (entry, error) {
	m, err := t.lastMsgFrom(ctx, s, subj, primary)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return entry{}, nil
	}
	if err != nil {
		return entry{}, err
	}
	e := entry{rev: m.Sequence, writer: m.Header.Get(hdrWrite)}
	if m.Header.Get(hdrCutMark) != "" && m.Header.Get(hdrMarker) == "" {
		if ttl, v, ok := decodeValue(m.Data); ok && ttl > 0 {
			if exp := m.Time.Add(time.Duration(ttl) * time.Millisecond); t.now().Before(exp) {
				e.mark, e.markExpires, e.lifeExpires = v, exp, cutLife(m)
			} else {
				e.retired = t.now().Before(cutLife(m))
			}
		}
		return e, nil
	}
	if m.Header.Get(hdrRetired) != "" && m.Header.Get(hdrMarker) == "" {
		if ttl, _, ok := decodeValue(m.Data); ok && ttl > 0 {
			e.retired = t.now().Before(m.Time.Add(time.Duration(ttl) * time.Millisecond))
		}
		return e, nil
	}
	if m.Header.Get(hdrOperation) != "" || m.Header.Get(hdrMarker) != "" {
		return e, nil
	}
	ttl, v, ok := decodeValue(m.Data)
	if !ok {
		ttl, v = 0, m.Data
	}
	if ttl > 0 {
		e.expires = m.Time.Add(time.Duration(ttl) * time.Millisecond)
		if !t.now().Before(e.expires) {
			return entry{rev: m.Sequence, retired: t.now().Before(cutLife(m))}, nil
		}
	}
	e.value, e.present, e.lifeExpires = v, true, cutLife(m)
	return e, nil
}

// cutLife returns when the cut life that m carries (see
// transport.Item.Life: a cut mark's, a cut's that found the record, or the
// cut's that a late write wrote in the mark's place) ends, counted from
// the server's timestamp on m; zero if it carries none.
func cutLife(m *jetstream.RawStreamMsg) time.Time {
	h := m.Header.Get(hdrCutLife)
	if h == "" {
		return time.Time{}
	}
	ms, err := strconv.ParseUint(h, 10, 63)
	if err != nil || ms == 0 {
		return time.Time{}
	}
	return m.Time.Add(time.Duration(ms) * time.Millisecond)
}

// message builds a write of value with ttl (0 for none) to key.
func (t *Transport) message(s *bucketState, key string, value []byte, ttl time.Duration) (*nats.Msg, []jetstream.PublishOpt) {
	m := &nats.Msg{Subject: s.pre + key, Data: value, Header: nats.Header{}}
	var opts []jetstream.PublishOpt
	if s.native && ttl > 0 {
		opts = append(opts, jetstream.WithMsgTTL(serverTTL(ttl)))
	}
	return m, opts
}

// purgeMessage builds a purge of key: a marker that also drops the key's
// older messages, itself expiring where the server allows.
func (t *Transport) purgeMessage(s *bucketState, key string) (*nats.Msg, []jetstream.PublishOpt) {
	m, opts := t.message(s, key, nil, markerTTL)
	m.Header.Set(hdrOperation, "PURGE")
	m.Header.Set(hdrRollup, "sub")
	return m, opts
}

// retireMessage builds the retirement of key (see transport.Item.Retire)
// for ttl: a purge, which drops the record if there is one, that carries
// a retirement mark and its TTL, and expires with it where the server
// allows. It is written unconditionally, in the batch's one round trip:
// where the purge found a record, the mark only drops a late write of a
// session that is retired anyway.
func (t *Transport) retireMessage(s *bucketState, key string, ttl time.Duration) (*nats.Msg, []jetstream.PublishOpt) {
	m, opts := t.message(s, key, encodeValue(ttlMillis(ttl), nil), ttl)
	m.Header.Set(hdrOperation, "PURGE")
	m.Header.Set(hdrRollup, "sub")
	m.Header.Set(hdrRetired, "1")
	return m, opts
}

// publishAll writes msgs pipelined and waits for every acknowledgment: one
// round trip for the batch.
func (t *Transport) publishAll(ctx context.Context, msgs []*nats.Msg, opts [][]jetstream.PublishOpt) error {
	futs := make([]jetstream.PubAckFuture, 0, len(msgs))
	for i, m := range msgs {
		f, err := t.js.PublishMsgAsync(m, opts[i]...)
		if err != nil {
			return err
		}
		futs = append(futs, f)
	}
	for _, f := range futs {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-t.closed:
			return errTransportClosed
		}
	}
	return nil
}

// PutRecords implements transport.RecordStore: every item is written with its
// TTL, the batch pipelined and acknowledged in one round trip. The
// Item.NoLonger and Item.Late ones are first written so too, each on the
// condition that its key never held a message (see createAll: a key that
// never held one holds no record and no cut mark); those the server
// refuses, and the Item.IfPresent ones, follow, each a read and a write
// conditional on the revision read (see replaceIn), concurrently. An
// Item.Retire is a purge that carries a retirement mark (retireMessage),
// written with the plain writes.
func (t *Transport) PutRecords(ctx context.Context, items ...transport.Item) error {
	m, s, err := t.openRecords(ctx)
	if err != nil {
		return err
	}
	msgs := make([]*nats.Msg, 0, len(items))
	opts := make([][]jetstream.PublishOpt, 0, len(items))
	var replace, create []transport.Item
	var longest time.Duration
	for _, it := range items {
		longest = max(longest, it.TTL)
		if it.Retire {
			msg, o := t.retireMessage(s, kvKey(it.Key), it.TTL)
			msgs, opts = append(msgs, msg), append(opts, o)
			continue
		}
		if it.IfPresent {
			longest = max(longest, it.Life)
			replace = append(replace, it)
			continue
		}
		if it.NoLonger || it.Late {
			create = append(create, it)
			continue
		}
		msg, o := t.message(s, kvKey(it.Key), encodeValue(ttlMillis(it.TTL), it.Value), it.TTL)
		msgs, opts = append(msgs, msg), append(opts, o)
	}
	t.ensureAge(ctx, s, longest)
	if len(msgs) > 0 {
		if err := t.check(m, "put", t.publishAll(ctx, msgs, opts)); err != nil {
			return err
		}
	}
	if len(create) > 0 {
		refused, err := t.createAll(ctx, s, create)
		if err := t.check(m, "put", err); err != nil {
			return err
		}
		replace = append(replace, refused...)
	}
	if len(replace) == 1 {
		return t.replaceIn(ctx, m, s, replace[0])
	}
	errs := make([]error, len(replace))
	var wg sync.WaitGroup
	sem := make(chan struct{}, maxReplacing)
	for i, it := range replace {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			errs[i] = t.replaceIn(ctx, m, s, it)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// createAll writes items in bucket s, pipelined, each on the condition
// that its key's subject has no message (an expected last sequence of 0),
// and returns those the server refused for that. A store that lost its
// data has no message at all: a write-back (Item.NoLonger) into it then
// takes one round trip, as plain writes do, not a read and a write a key;
// so does a late write (Item.Late) of a session whose failed write never
// landed, and which no cut has marked.
// A refused item found a record, a marker or an expired value there, and
// is for replaceIn.
func (t *Transport) createAll(ctx context.Context, s *bucketState, items []transport.Item) ([]transport.Item, error) {
	futs := make([]jetstream.PubAckFuture, len(items))
	for i, it := range items {
		msg, opts := t.message(s, kvKey(it.Key), encodeValue(ttlMillis(it.TTL), it.Value), it.TTL)
		opts = append(opts, jetstream.WithExpectLastSequencePerSubject(0))
		f, err := t.js.PublishMsgAsync(msg, opts...)
		if err != nil {
			return nil, err
		}
		futs[i] = f
	}
	var refused []transport.Item
	for i, f := range futs {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			if !wrongLastSequence(err) {
				return nil, err
			}
			refused = append(refused, items[i])
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.closed:
			return nil, errTransportClosed
		}
	}
	return refused, nil
}

// maxReplacing bounds the conditional writes (Item.IfPresent,
// Item.NoLonger, Item.Late) of one PutRecords in flight at once.
const maxReplacing = 16

// replaceIn writes it in bucket s only if a record is at its key that
// would outlive it.TTL (Item.IfPresent), or, for an Item.NoLonger, also
// if none is: the key is read, and written with the revision read as
// the expected last sequence of its subject (0, none, for a key never
// written), so that the server refuses the write if the record was
// deleted, written or rewritten in between. The read is the stream
// leader's on a bucket of more than one replica, as under
// transport.PrimaryRead (see lastMsgFrom): the leader checks the write
// against its own revision, and a direct get may go to a follower that
// lags (the write is then refused) or that is cut off (it answers
// nothing, and the write waits for all of ctx while the leader could
// have answered). A cut that finds no record
// leaves, so, a cut mark in its place: a delete marker that carries the
// cut and its TTL, unless a mark that lapses no later is there. A late
// write (Item.Late) that finds a mark lapsing sooner than it.TTL writes
// the mark's value, for what is left of it, and otherwise it.Value,
// so too: a mark and a late write, each conditional on the revision read,
// are applied in one order or the other, and either way the store ends
// with the cut. A cut with an Item.Life gives its mark, or the record it
// shortens (and a late write the cut it writes in the mark's place), that
// life, in a header and as the message's TTL: once the cut lapses, the
// key reads as retired for the rest of it, and while it lasts, a late
// write that finds the cut's record, shorter than it.TTL, leaves it as
// it is. A late write that finds a retirement mark (see
// retireMessage) writes nothing, and a cut leaves the mark as it is: the
// mark is written unconditionally, so that a retirement and a late write
// applied in either order leave the store without the record. A
// write-back (Item.NoLonger) honours the marks as a late write does. A refused
// write is tried again from the read, a few times; a key that kept
// changing is an error, so that the farm keeps the write for later rather
// than drop it.
func (t *Transport) replaceIn(ctx context.Context, m, s *bucketState, it transport.Item) error {
	k := kvKey(it.Key)
	ctx, cancel := leaderBound(ctx)
	defer cancel()
	for refused := 0; refused < 3; {
		e, err := t.getFrom(ctx, s, s.pre+k, true)
		if err != nil {
			return t.check(m, "replace", err)
		}
		now := t.now()
		value, ttl, mark, life := it.Value, it.TTL, false, time.Duration(0)
		marked := (it.Late || it.NoLonger) && !it.IfPresent // honours the marks
		switch {
		case e.retired:
			return nil
		case !e.present && it.IfPresent:
			if e.mark != nil && !e.markExpires.After(now.Add(it.TTL)) {
				return nil
			}
			mark = true
		case e.present && (it.IfPresent || it.NoLonger) && !e.expires.IsZero() && !e.expires.After(now.Add(it.TTL)):
			// It lapses no later than this write would: a cut and a
			// write-back only shorten (see Item.IfPresent,
			// Item.NoLonger).
			return nil
		case marked && e.present && !e.lifeExpires.IsZero() && !e.expires.IsZero() && !e.expires.After(now.Add(it.TTL)):
			// A cut's record, which lapses no later than this write
			// would: the cut stands (see Item.Life).
			return nil
		case marked && e.mark != nil && e.markExpires.Before(now.Add(it.TTL)):
			value, ttl = e.mark, e.markExpires.Sub(now)
			if left := e.lifeExpires.Sub(now); left > ttl {
				life = left // the cut, written, keeps the mark's life
			}
		}
		if it.IfPresent && it.Life > it.TTL {
			life = it.Life // the cut, mark or record, outlived by its life
		}
		msg, opts := t.message(s, k, encodeValue(ttlMillis(ttl), value), max(ttl, life))
		if mark {
			msg.Header.Set(hdrOperation, "DEL")
			msg.Header.Set(hdrCutMark, "1")
		}
		if life > 0 {
			msg.Header.Set(hdrCutLife, strconv.FormatUint(ttlMillis(life), 10))
		}
		opts = append(opts, jetstream.WithExpectLastSequencePerSubject(e.rev))
		if t.beforeCondWrite != nil {
			t.beforeCondWrite(msg, opts)
		}
		err = t.publishAttempt(ctx, msg, opts)
		if errors.Is(err, errAttemptLost) {
			// Unanswered: read again. A write of this one's that
			// landed is then the record or mark found, which the
			// write leaves as it is (it would not shorten it).
			continue
		}
		if err == nil || !wrongLastSequence(err) {
			return t.check(m, "replace", err)
		}
		refused++
	}
	return errors.New("natsbus: a record kept changing while it was being replaced")
}

// openRecords opens the store and returns its state m (for check) and the
// state s of the bucket that holds the session records: m itself on a
// server with per-message TTL, the records' own bucket on an older one.
// Every transport.RecordStore method works on s.
func (t *Transport) openRecords(ctx context.Context) (m, s *bucketState, err error) {
	m, err = t.open(ctx)
	if err != nil {
		return nil, nil, err
	}
	return m, m.records, nil
}

// GetRecord implements transport.RecordStore as Get does, in the records'
// bucket.
func (t *Transport) GetRecord(ctx context.Context, key string) ([]byte, error) {
	m, s, err := t.openRecords(ctx)
	if err != nil {
		return nil, err
	}
	e, err := t.get(ctx, s, s.pre+kvKey(key))
	if err != nil {
		return nil, t.check(m, "get", err)
	}
	if !e.present {
		return nil, transport.ErrNotFound
	}
	return e.value, nil
}

// Get implements transport.Coordinator with one read of the key's last
// message: a direct get, which any replica of the bucket may answer, or
// under transport.PrimaryRead a get that the stream's leader answers (see
// lastMsg). An expired value is transport.ErrNotFound, also on a server
// that has not yet removed it.
func (t *Transport) Get(ctx context.Context, key string) ([]byte, error) {
	s, err := t.open(ctx)
	if err != nil {
		return nil, err
	}
	e, err := t.get(ctx, s, s.pre+kvKey(key))
	if err != nil {
		return nil, t.check(s, "get", err)
	}
	if !e.present {
		return nil, transport.ErrNotFound
	}
	return e.value, nil
}

// DeleteRecords implements transport.RecordStore: each key is purged (its
// messages dropped, a marker left), pipelined.
func (t *Transport) DeleteRecords(ctx context.Context, keys ...string) error {
	if len(keys) == 0 {
		return nil
	}
	m, s, err := t.openRecords(ctx)
	if err != nil {
		return err
	}
	msgs := make([]*nats.Msg, len(keys))
	opts := make([][]jetstream.PublishOpt, len(keys))
	for i, k := range keys {
		msgs[i], opts[i] = t.purgeMessage(s, kvKey(k))
	}
	return t.check(m, "delete", t.publishAll(ctx, msgs, opts))
}

// TakeRecord implements transport.RecordTaker: the key is read and purged with
// the read revision as the expected last sequence of its subject, so that
// of concurrent takers the server accepts exactly one purge. The read is
// the stream leader's on a bucket of more than one replica, as replaceIn's
// is: a direct get may go to a replica cut off from the leader, which
// would hold the take for all of ctx. The purge
// carries a retirement mark (retireMessage) for the record's remaining
// life, at no extra cost (the same message, a few bytes more): the writer
// of a single-use session whose first write was reported failed but
// landed writes it again as a late write, which then writes nothing
// (replaceIn), where it would put the session back for a second taker.
// A purge refused because the key changed (it was rewritten) is retried
// from the read, a few times.
//
// A purge whose acknowledgment does not come within an attempt (see
// leaderAttempt) is not waited on for the rest of ctx: a request sent
// into a route to the leader that is frozen, or lost with it, is never
// answered (TestCondWriteAnswersAfterLostWrite; before, the take waited
// all of its bound). The key is read again from the leader: a purge that
// landed is known by the take's token (see writeToken), and the take
// returns the value it read; a record still there is purged again under
// the same condition, of which the server accepts at most one.
func (t *Transport) TakeRecord(ctx context.Context, key string) ([]byte, error) {
	m, s, err := t.openRecords(ctx)
	if err != nil {
		return nil, err
	}
	ctx, cancel := leaderBound(ctx)
	defer cancel()
	k := kvKey(key)
	token := writeToken()
	var value []byte // what the last purge sent was to take
	sent := false    // a purge of this take's went out, and may have landed
	for refused := 0; refused < 3; {
		e, err := t.getFrom(ctx, s, s.pre+k, true)
		if err != nil {
			return nil, t.check(m, "take", err)
		}
		if sent && e.writer == token {
			return value, nil // a purge of this take's landed; its answer was lost
		}
		if !e.present {
			return nil, transport.ErrNotFound
		}
		var msg *nats.Msg
		var opts []jetstream.PublishOpt
		if left := e.expires.Sub(t.now()); left > 0 {
			msg, opts = t.retireMessage(s, k, left)
		} else {
			msg, opts = t.purgeMessage(s, k) // no TTL: a value natsbus did not write
		}
		msg.Header.Set(hdrWrite, token)
		opts = append(opts, jetstream.WithExpectLastSequencePerSubject(e.rev))
		value, sent = e.value, true
		if t.beforeCondWrite != nil {
			t.beforeCondWrite(msg, opts)
		}
		err = t.publishAttempt(ctx, msg, opts)
		switch {
		case err == nil:
			return e.value, nil
		case errors.Is(err, errAttemptLost):
			// Read again: it landed, or it did not.
		case wrongLastSequence(err):
			refused++
		default:
			return nil, t.check(m, "take", err)
		}
	}
	return nil, transport.ErrNotFound
}

// errAttemptLost is publishAttempt's error for an attempt that passed
// without an answer while its context goes on.
var errAttemptLost = errors.New("natsbus: a write's acknowledgment did not come within its attempt")

// publishAttempt publishes msg with opts and waits for its acknowledgment
// for one attempt (see leaderAttempt) of what is left of ctx, which has a
// deadline: errAttemptLost if none came while ctx goes on.
func (t *Transport) publishAttempt(ctx context.Context, msg *nats.Msg, opts []jetstream.PublishOpt) error {
	deadline, _ := ctx.Deadline()
	left := time.Until(deadline)
	if attempt := leaderAttempt(left); attempt < left {
		actx, cancel := context.WithTimeout(ctx, attempt)
		defer cancel()
		_, err := t.js.PublishMsg(actx, msg, opts...)
		if err != nil && actx.Err() != nil && ctx.Err() == nil {
			return errAttemptLost
		}
		return err
	}
	_, err := t.js.PublishMsg(ctx, msg, opts...)
	return err
}

// writeToken returns a token that names one conditional write (a take,
// see TakeRecord, or a swap, see swapIn) in the message it writes
// (hdrWrite): random, so that no other write carries it. A write whose
// acknowledgment is lost reads the key again and knows its own message.
func writeToken() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// AddRecord implements transport.RecordTaker as SetNX does, in the records'
// bucket.
func (t *Transport) AddRecord(ctx context.Context, it transport.Item) (bool, error) {
	m, s, err := t.openRecords(ctx)
	if err != nil {
		return false, err
	}
	t.ensureAge(ctx, s, it.TTL)
	return t.swapIn(ctx, m, s, "add", it.Key, nil, it.Value, it.TTL)
}

// SetNX implements transport.Coordinator: a write that the server accepts only if the
// key's last message is the one just read and found absent (none, a
// marker, or an expired value).
func (t *Transport) SetNX(ctx context.Context, key string, value []byte, ttl time.Duration) (bool, error) {
	return t.swap(ctx, "setnx", key, nil, value, ttl)
}

// CompareAndSwap implements transport.Coordinator: the key is read, compared, and
// written with the read revision as the expected last sequence of its
// subject, so that the server refuses the write if anything else wrote in
// between.
func (t *Transport) CompareAndSwap(ctx context.Context, key string, old, new []byte, ttl time.Duration) (bool, error) {
	return t.swap(ctx, "compare-and-swap", key, old, new, ttl)
}

// swap sets key to new if its value is old (or absent, for a nil old).
// A write refused because the key changed since it was read is retried
// from the read, a few times: the key may only have expired, or been
// rewritten with the same value.
func (t *Transport) swap(ctx context.Context, op, key string, old, new []byte, ttl time.Duration) (bool, error) {
	s, err := t.open(ctx)
	if err != nil {
		return false, err
	}
	t.ensureAge(ctx, s, ttl)
	return t.swapIn(ctx, s, s, op, key, old, new, ttl)
}

// swapIn is swap in bucket s (m: the transport's main bucket state, for
// error checks).
//
// A write whose acknowledgment does not come within an attempt (see
// leaderAttempt) is not waited on for the rest of ctx: the key is read
// again from the stream's leader, and a write that landed is known by its
// token (see writeToken) and reported made; otherwise the swap goes on
// from that read. Before, a write sent into a route to the leader that
// was frozen or lost waited all of ctx (TestCondWriteAnswersAfterLostWrite).
func (t *Transport) swapIn(ctx context.Context, m, s *bucketState, op, key string, old, new []byte, ttl time.Duration) (bool, error) {
	k := kvKey(key)
	val := encodeValue(ttlMillis(ttl), new)
	ctx, cancel := leaderBound(ctx)
	defer cancel()
	token := writeToken()
	sent := false // a write of this swap's went out, and may have landed
	for refused := 0; refused < 3; {
		e, err := t.getFrom(ctx, s, s.pre+k, sent || transport.IsPrimaryRead(ctx))
		if err != nil {
			return false, t.check(m, op, err)
		}
		if sent && e.writer == token {
			return true, nil
		}
		if old == nil && e.present || old != nil && (!e.present || !bytes.Equal(e.value, old)) {
			return false, nil
		}
		msg, opts := t.message(s, k, val, ttl)
		msg.Header.Set(hdrWrite, token)
		opts = append(opts, jetstream.WithExpectLastSequencePerSubject(e.rev))
		if t.beforeCondWrite != nil {
			t.beforeCondWrite(msg, opts)
		}
		sent = true
		err = t.publishAttempt(ctx, msg, opts)
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, errAttemptLost):
			// Read again: it landed, or it did not.
		case wrongLastSequence(err):
			// Refused: the key changed since the read. An earlier
			// attempt's write may be what changed it.
			refused++
		default:
			return false, t.check(m, op, err)
		}
	}
	return false, nil
}

// wrongLastSequence reports whether err is the server refusing a write
// whose expected last sequence did not match.
func wrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

var (
	_ transport.Bus          = (*Transport)(nil)
	_ transport.Store        = (*Transport)(nil)
	_ transport.RecordTaker  = (*Transport)(nil)
	_ transport.SetVersioner = (*Transport)(nil)
)
