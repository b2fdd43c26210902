package natsbus

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
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

// setVersionKey returns the KV key of the version of the set at key (see
// SetVersion). Its first token is not setPrefix's, so that listing the
// set's members does not find it.
func setVersionKey(key string) string {
	return setVersionPrefix + kvKey(key)
}

// SetAdd implements transport.Coordinator: a set is a group of keys, one per member,
// each holding its time and the member, and expiring a second after it
// where the server allows. The member and a new random version of the set
// (see SetVersion) are written in one round trip, the version after the
// member.
func (t *Transport) SetAdd(ctx context.Context, key string, member []byte, until time.Time) error {
	s, err := t.open(ctx)
	if err != nil {
		return err
	}
	ms := max(until.UnixMilli(), 1)
	// At least a second, also for a member whose time has passed: a TTL
	// of 0 or less would write it with none, for good.
	ttl := max(until.Sub(t.now())+time.Second, time.Second)
	t.ensureAge(ctx, s, ttl)
	m, opts := t.message(s, setMemberKey(key, member), encodeValue(uint64(ms), member), ttl)
	var ver [16]byte
	rand.Read(ver[:])
	// No TTL: the version must outlive every member of the set, and it is
	// one small key per set.
	vm, vopts := t.message(s, setVersionKey(key), encodeValue(0, ver[:]), 0)
	err = t.publishAll(ctx, []*nats.Msg{m, vm}, [][]jetstream.PublishOpt{opts, vopts})
	return t.check(s, "set add", err)
}

// SetVersion implements transport.SetVersioner: SetAdd writes the set's
// version, a random value, after each member it adds, in the same round
// trip and in order, so that a reader who finds a version read the
// members added before it. A bucket made anew (a server that lost its
// store) has none (nil) until the next SetAdd.
func (t *Transport) SetVersion(ctx context.Context, key string) ([]byte, error) {
	s, err := t.open(ctx)
	if err != nil {
		return nil, err
	}
	e, err := t.get(ctx, s, s.pre+setVersionKey(key))
	if err != nil {
		return nil, t.check(s, "set version", err)
	}
	if !e.present {
		return nil, nil
	}
	return e.value, nil
}

// SetMembers implements transport.Coordinator: it reads the set's member keys with one
// watcher and keeps, of the members whose time has not passed by the
// server's clock (Time) and that are at most transport.MaxSetMemberSize
// bytes long, the transport.MaxSetMembers that lapse last, as Redis does.
// What it holds while it reads is bounded by what it keeps: a set of any
// size, or one filled by someone else, costs no more memory than a full
// answer. On a server that does not expire keys itself it purges the
// lapsed members as it finds them, in batches of purgeBatch.
//
// Under transport.PrimaryRead it returns every member the leader of the
// bucket's stream held when the read ended its checks, or an error: the
// watcher may read a replica that lags, and a read that cannot confirm it
// has had the set's last message at the leader (after setMaxChecks
// checks, an empty set included) fails rather than return a short set.
func (t *Transport) SetMembers(ctx context.Context, key string) ([][]byte, error) {
	// The read may have a long bound (the farm allows a full set tens of
	// seconds): it ends when the connection does.
	cctx, stop := t.whileConnected(ctx)
	defer stop()
	members, err := t.setMembers(cctx, key)
	if err != nil && errors.Is(context.Cause(cctx), errConnectionLost) {
		return nil, fmt.Errorf("natsbus: set members: %w", errConnectionLost)
	}
	return members, err
}

// errConnectionLost ends an operation that was under way when the client
// lost its server (see whileConnected).
var errConnectionLost = errors.New("the connection to NATS was lost during the read")

// connPoll is how often whileConnected looks at the connection.
const connPoll = 50 * time.Millisecond

// whileConnected returns a context that ends with ctx, or with cause
// errConnectionLost as soon as the client is no longer connected or has
// connected anew (within connPoll): nats.go does not fail a request that
// was in flight when the connection went, and a watcher's entries from a
// server that is gone never come, so an operation with a long bound would
// wait all of it for an answer that cannot come. Call the function it
// returns when the operation is over.
func (t *Transport) whileConnected(ctx context.Context) (context.Context, context.CancelFunc) {
	reconnects := t.nc.Stats().Reconnects
	cctx, cancel := context.WithCancelCause(ctx)
	go func() {
		tick := time.NewTicker(connPoll)
		defer tick.Stop()
		for {
			select {
			case <-cctx.Done():
				return
			case <-tick.C:
				if !t.sameConnection(reconnects) {
					cancel(errConnectionLost)
					return
				}
			}
		}
	}()
	return cctx, func() { cancel(context.Canceled) }
}

// sameConnection reports whether the client is connected, on the
// connection it had made after reconnects reconnects (nats.Statistics).
func (t *Transport) sameConnection(reconnects uint64) bool {
	return t.nc.Status() == nats.CONNECTED && t.nc.Stats().Reconnects == reconnects
}

// setMembers is SetMembers within the connection it began on.
func (t *Transport) setMembers(ctx context.Context, key string) ([][]byte, error) {
	s, err := t.open(ctx)
	if err != nil {
		return nil, err
	}
	now, err := t.Time(ctx)
	if err != nil {
		return nil, err
	}
	// Deletes (purges, expiry markers) are skipped below, not by the
	// watcher: the read's end is a place in the stream (see below), which
	// one of them may hold.
	w, stop, err := t.watch(ctx, s, setPrefix+kvKey(key)+".*")
	if err != nil {
		return nil, t.check(s, "set members", err)
	}
	defer stop()
	keep := lastLapsing{limit: maxSetMembers}
	type lapsedMember struct {
		key string
		rev uint64
	}
	var lapsed []lapsedMember // key names and revisions only, not values
	purge := func() error {
		if len(lapsed) == 0 || s.native {
			lapsed = lapsed[:0]
			return nil
		}
		// Each purge is for the lapsed value read, not for the key: the
		// server refuses it if the member was added again since.
		futs := make([]jetstream.PubAckFuture, 0, len(lapsed))
		for _, e := range lapsed {
			m, opts := t.purgeMessage(s, e.key)
			opts = append(opts, jetstream.WithExpectLastSequencePerSubject(e.rev))
			f, err := t.js.PublishMsgAsync(m, opts...)
			if err != nil {
				return t.check(s, "set members", err)
			}
			futs = append(futs, f)
		}
		lapsed = lapsed[:0]
		for _, f := range futs {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				if !wrongLastSequence(err) {
					return t.check(s, "set members", err)
				}
			case <-ctx.Done():
				return t.check(s, "set members", ctx.Err())
			case <-t.closed:
				return t.check(s, "set members", errTransportClosed)
			}
		}
		return nil
	}
	// The watcher says its initial values are all in (a nil entry) once
	// it has delivered as many entries as were pending when it began. But
	// a member added again meanwhile (a retried revocation adds the same
	// member) replaces its message with a later one, and the earlier one
	// is never delivered: entries added since were counted in its place,
	// and the watcher ended before the later one came, leaving out a
	// member that was in the set all along (1 of 5,000 in most reads of a
	// set added to meanwhile, on nats-server 2.9 and 2.15; the count of
	// entries pending, which the watcher also reads, was seen at 0 with
	// the re-added member still to come). So after the nil the read asks
	// the stream (its leader, under transport.PrimaryRead: see lastMsg)
	// for the last message of the members' keys and goes on
	// until it has had that one (or a later one of its key), and asks
	// again, at most setMaxChecks times in all: a bound on what it reads,
	// however fast members are added. An empty set ends at the nil.
	//
	// Under transport.PrimaryRead the read must also be confirmed by the
	// leader: the watcher's consumer may be placed on a replica that lags
	// (nats-server places an ordered consumer on any replica, and a
	// consumer on a follower delivers what that follower has applied), so
	// an empty first pass asks the leader too, and a read that has not had
	// the message the leader named when its checks run out is an error,
	// not a short set (see errSetUnconfirmed).
	primary := transport.IsPrimaryRead(ctx)
	filter := s.pre + setPrefix + kvKey(key) + ".*"
	var lastRev, want uint64
	seen := false
	checks := 0
	var recheck <-chan time.Time
	var armedAt uint64 // lastRev when recheck was set
	// more asks the stream, and reports whether the read must go on.
	more := func() (bool, error) {
		checks++
		m, err := t.lastMsg(ctx, s, filter)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return false, nil
		}
		if err != nil {
			return false, t.check(s, "set members", err)
		}
		if m.Sequence <= lastRev {
			return false, nil
		}
		want = m.Sequence
		// Should that message go before it is read (it expired), ask
		// again.
		recheck, armedAt = time.After(setRecheck), lastRev
		return true, nil
	}
read:
	for {
		var e jetstream.KeyValueEntry
		select {
		case u, ok := <-w.Updates():
			if !ok {
				// The watcher ended before the set was read whole:
				// its entries so far are not the set.
				if err := ctx.Err(); err != nil {
					return nil, fmt.Errorf("natsbus: set members: %w", err)
				}
				return nil, errors.New("natsbus: set members: the watcher ended before the set was read")
			}
			e = u
		case <-recheck:
			if lastRev != armedAt {
				// Still reading: not what the wait is for.
				recheck, armedAt = time.After(setRecheck), lastRev
				continue
			}
			recheck = nil
			if checks >= setMaxChecks {
				if primary && lastRev < want {
					return nil, errSetUnconfirmed
				}
				break read
			}
			if again, err := more(); err != nil {
				return nil, err
			} else if !again {
				break read
			}
			continue
		case <-ctx.Done():
			return nil, fmt.Errorf("natsbus: set members: %w", ctx.Err())
		}
		if e == nil {
			if !seen && !primary {
				break // nothing was in the set
			}
			if again, err := more(); err != nil {
				return nil, err
			} else if !again {
				break
			}
			continue
		}
		seen = true
		lastRev = max(lastRev, e.Revision())
		if e.Operation() == jetstream.KeyValuePut {
			until, member, ok := decodeValue(e.Value())
			switch {
			case !ok:
			case int64(until) > now.UnixMilli():
				if len(member) <= transport.MaxSetMemberSize {
					keep.add(until, member)
				}
			default:
				lapsed = append(lapsed, lapsedMember{e.Key(), e.Revision()})
				if len(lapsed) == purgeBatch {
					if err := purge(); err != nil {
						return nil, err
					}
				}
			}
		}
		if want == 0 || lastRev < want {
			continue
		}
		if checks >= setMaxChecks {
			break
		}
		if again, err := more(); err != nil {
			return nil, err
		} else if !again {
			break
		}
	}
	if err := purge(); err != nil {
		return nil, err
	}
	return keep.members(), nil
}

// watch starts a watcher of the keys subj in bucket s, for SetMembers,
// and returns it with the function that stops it. The watcher's consumer
// is made by a request to the stream's leader, which may be lost in a
// route as a leader's get is (see leaderAttempt): nats.go waits for its
// answer until the watcher's context is done, and ends the watcher with
// that context. So each attempt has a context of its own, cancelled if
// the attempt passes without an answer, and a new one is made, until ctx
// is done. A consumer made for an attempt whose answer came too late is
// left to the server, which deletes an ordered consumer that nobody
// reads after a few seconds.
func (t *Transport) watch(ctx context.Context, s *bucketState, subj string) (jetstream.KeyWatcher, func(), error) {
	for {
		wctx, cancel := context.WithCancel(ctx)
		stop := func(w jetstream.KeyWatcher) func() {
			return func() {
				if w != nil {
					w.Stop()
				}
				cancel()
			}
		}
		deadline, ok := ctx.Deadline()
		if !ok {
			w, err := s.kv.Watch(wctx, subj)
			if err != nil {
				cancel()
				return nil, nil, err
			}
			return w, stop(w), nil
		}
		left := time.Until(deadline)
		attempt := leaderAttempt(left)
		var timer *time.Timer
		if attempt < left {
			timer = time.AfterFunc(attempt, cancel)
		}
		w, err := s.kv.Watch(wctx, subj)
		if timer == nil || timer.Stop() {
			// Answered (or failed) within the attempt.
			if err != nil {
				cancel()
				return nil, nil, err
			}
			return w, stop(w), nil
		}
		// The attempt passed: its context is cancelled, and with it
		// any watcher it made.
		stop(w)()
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
	}
}

// errSetUnconfirmed is SetMembers' answer under transport.PrimaryRead
// when its watcher has not delivered the message the stream's leader
// named as the set's last (see setMaxChecks): the watcher reads a replica
// that lags, and what it read may lack members the leader has.
var errSetUnconfirmed = errors.New("natsbus: set members: the read did not reach the set's last message at the stream's leader (a lagging replica?)")

// setRecheck is how long SetMembers waits to read the message the stream
// named as the set's last before it asks again; setMaxChecks bounds how
// many times it asks.
const (
	setRecheck   = time.Second
	setMaxChecks = 4
)

// maxSetMembers is transport.MaxSetMembers, smaller in tests.
var maxSetMembers = transport.MaxSetMembers

// purgeBatch is how many lapsed members SetMembers purges at a time, on a
// server that does not expire them: so many key names at most are held.
const purgeBatch = 1024

// lastLapsing keeps, of the members added to it, the limit whose times are
// latest: a min-heap by time, so that it never holds more than limit
// members, each a copy of at most transport.MaxSetMemberSize bytes (not
// the message it came in).
type lastLapsing struct {
	limit int
	h     []setMember
}

type setMember struct {
	until  uint64
	member []byte
}

// add offers a member that lapses at until.
func (l *lastLapsing) add(until uint64, member []byte) {
	if l.limit <= 0 {
		return
	}
	if len(l.h) < l.limit {
		l.h = append(l.h, setMember{until, bytes.Clone(member)})
		// Sift up.
		for i := len(l.h) - 1; i > 0; {
			p := (i - 1) / 2
			if l.h[p].until <= l.h[i].until {
				break
			}
			l.h[p], l.h[i] = l.h[i], l.h[p]
			i = p
		}
		return
	}
	if until <= l.h[0].until {
		return // lapses no later than every member kept
	}
	// Replace the member that lapses first, reusing its buffer, and sift down.
	l.h[0] = setMember{until, append(l.h[0].member[:0], member...)}
	for i := 0; ; {
		c := 2*i + 1
		if c >= len(l.h) {
			break
		}
		if c+1 < len(l.h) && l.h[c+1].until < l.h[c].until {
			c++
		}
		if l.h[i].until <= l.h[c].until {
			break
		}
		l.h[i], l.h[c] = l.h[c], l.h[i]
		i = c
	}
}

// members returns the members kept, in no particular order.
func (l *lastLapsing) members() [][]byte {
	out := make([][]byte, len(l.h))
	for i, m := range l.h {
		out[i] = m.member
	}
	return out
}
