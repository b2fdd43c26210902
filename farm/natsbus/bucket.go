package natsbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redact"
)

// markerTTL is how long the server keeps the marker it leaves when a key
// expires or is deleted (nats-server 2.11+): long enough for an operator's
// `nats kv watch` to see it, short enough to cost nothing.
const markerTTL = 15 * time.Second

// initTimeout bounds opening the bucket, whoever asked first.
const initTimeout = 5 * time.Second

// bucketState is what the store knows once the bucket is open.
type bucketState struct {
	kv     jetstream.KeyValue
	stream jetstream.Stream
	name   string // the stream's name: "KV_<bucket>"
	pre    string // "$KV.<bucket>."
	native bool   // the server expires messages by their own TTL

	noInfoTime atomic.Bool // the server's stream info has no time stamp
	probing    atomic.Bool // a timed-out request is having the streams checked (see check)

	// lone says the stream has one replica, which is its leader and
	// answers every direct get: a read under transport.PrimaryRead is a
	// direct get then (see lastMsg). Unknown is false. replicasAt is
	// when it was last read from the stream's info (Unix nanoseconds),
	// replicasBusy whether a read of it is under way (see
	// recheckReplicas).
	lone         atomic.Bool
	replicasAt   atomic.Int64
	replicasBusy atomic.Bool

	// records is where the session records live: this bucket where keys
	// expire by their own TTL, else a bucket of their own whose age limit
	// follows the longest record TTL written (age, in ns), so that the
	// bulk of the data is not kept for as long as the coordination keys.
	records *bucketState
	age     atomic.Int64
}

// open returns the bucket, creating it on first use, or an error at once if
// the connection is down. Callers wait at most until ctx is done; the
// lookup itself runs to initTimeout, so that a handshake's short lookup
// deadline does not starve it.
func (t *Transport) open(ctx context.Context) (*bucketState, error) {
	// While the client reconnects, requests would wait in its buffer until
	// their deadline: fail at once instead, as the bus does.
	if st := t.nc.Status(); st != nats.CONNECTED {
		return nil, fmt.Errorf("natsbus: store: connection is %v: %w", st, transport.ErrNotConnected)
	}
	if s := t.store.Load(); s != nil {
		return s, nil
	}
	t.initMu.Lock()
	ch := t.initCh
	if ch == nil {
		ch = make(chan struct{})
		t.initCh = ch
		go t.openBucket(ch)
	}
	t.initMu.Unlock()
	select {
	case <-ch:
	case <-ctx.Done():
		return nil, fmt.Errorf("natsbus: opening bucket %s: %w", t.bucket, ctx.Err())
	}
	if s := t.store.Load(); s != nil {
		return s, nil
	}
	t.initMu.Lock()
	defer t.initMu.Unlock()
	return nil, t.initErr
}

func (t *Transport) openBucket(done chan struct{}) {
	ctx, cancel := context.WithTimeout(context.Background(), initTimeout)
	defer cancel()
	s, err := t.lookupBucket(ctx)
	t.initMu.Lock()
	switch {
	case err == nil:
	case errors.Is(err, context.DeadlineExceeded) || unanswered(err):
		// The open's own bound passed without an answer: the server
		// did not answer, which the farm's hit gate tells from its
		// refusals (as check does for a request's).
		t.initErr = fmt.Errorf("natsbus: bucket %s: %w (%v)", t.bucket, os.ErrDeadlineExceeded, redact.Error(err, t.secrets))
	case notConnected(err):
		t.initErr = fmt.Errorf("natsbus: bucket %s: %w (%v)", t.bucket, transport.ErrNotConnected, redact.Error(err, t.secrets))
	default:
		t.initErr = fmt.Errorf("natsbus: bucket %s: %v", t.bucket, redact.Error(err, t.secrets))
	}
	if err == nil {
		t.store.Store(s)
	}
	t.initCh = nil
	t.initMu.Unlock()
	close(done)
}

func (t *Transport) lookupBucket(ctx context.Context) (*bucketState, error) {
	kv, err := t.js.KeyValue(ctx, t.bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = t.createBucket(ctx)
	}
	if err != nil {
		return nil, err
	}
	stream, err := t.js.Stream(ctx, "KV_"+t.bucket)
	if err != nil {
		return nil, err
	}
	info := stream.CachedInfo()
	if info == nil {
		if info, err = stream.Info(ctx); err != nil {
			return nil, err
		}
	}
	cfg := info.Config
	if want := t.opts.Replicas; want > 0 && max(cfg.Replicas, 1) != want {
		return nil, fmt.Errorf("exists with %d replica(s), but %d were asked for: "+
			"change it (nats stream edit KV_%s --replicas %d) or ask for %d",
			max(cfg.Replicas, 1), want, t.bucket, want, max(cfg.Replicas, 1))
	}
	s := &bucketState{kv: kv, stream: stream, name: "KV_" + t.bucket, pre: "$KV." + t.bucket + ".", native: cfg.AllowMsgTTL}
	s.setReplicas(cfg.Replicas, time.Now())
	s.records = s
	if !s.native {
		// Coordination keys (revocation tombstones above all) may be
		// written to live longer than the age limit: raised to cover
		// them as the records' is (see ensureAge).
		s.age.Store(int64(cfg.MaxAge))
		if s.records, err = t.lookupRecordBucket(ctx, max(cfg.Replicas, 1)); err != nil {
			return nil, fmt.Errorf("bucket %s: %w", t.RecordBucket(), err)
		}
	}
	return s, nil
}

// lookupRecordBucket opens (or creates) the bucket of session records that
// a server without per-message TTL needs.
func (t *Transport) lookupRecordBucket(ctx context.Context, replicas int) (*bucketState, error) {
	name := t.RecordBucket()
	kv, err := t.js.KeyValue(ctx, name)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		cfg := jetstream.KeyValueConfig{
			Bucket:      name,
			Description: "tlsfarm: sealed sessions (age limit follows the longest session lifetime)",
			History:     1,
			Replicas:    replicas,
			TTL:         t.opts.LegacyRecordAge,
		}
		if t.opts.MemoryStorage {
			cfg.Storage = jetstream.MemoryStorage
		}
		kv, err = t.createKV(ctx, cfg)
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = t.js.KeyValue(ctx, name)
		}
	}
	if err != nil {
		return nil, err
	}
	stream, err := t.js.Stream(ctx, "KV_"+name)
	if err != nil {
		return nil, err
	}
	s := &bucketState{kv: kv, stream: stream, name: "KV_" + name, pre: "$KV." + name + "."}
	s.records = s
	if info := stream.CachedInfo(); info != nil {
		s.age.Store(int64(info.Config.MaxAge))
		s.setReplicas(info.Config.Replicas, time.Now())
	}
	return s, nil
}

// setReplicas records the replica count of s's stream, read at now.
func (s *bucketState) setReplicas(n int, now time.Time) {
	s.lone.Store(max(n, 1) == 1)
	s.replicasAt.Store(now.UnixNano())
}

// replicasRecheck is how often a bucket's replica count of one is read
// again (an operator may add replicas to a live bucket: nats stream
// edit). A variable for the tests.
var replicasRecheck = 30 * time.Second

// recheckReplicas reads the replica count of s's stream again, in the
// background and one read at a time, if it was last read more than
// replicasRecheck ago. A read that fails leaves it as it was, and is
// tried again on a later call.
func (t *Transport) recheckReplicas(s *bucketState) {
	if time.Since(time.Unix(0, s.replicasAt.Load())) < replicasRecheck || !s.replicasBusy.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer s.replicasBusy.Store(false)
		ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
		defer cancel()
		if info, err := s.stream.Info(ctx); err == nil {
			s.setReplicas(info.Config.Replicas, time.Now())
		}
	}()
}

// ensureAge raises the age limit of the legacy bucket s (the records' or
// the coordination keys') to cover a key written with ttl, rounded up to
// ten minutes; it never lowers it. A failure leaves the limit as it was
// (the key may then be dropped early) and is retried on the next write
// that needs it.
func (t *Transport) ensureAge(ctx context.Context, s *bucketState, ttl time.Duration) {
	if s.native || s.age.Load() == 0 || ttl <= time.Duration(s.age.Load()) {
		return
	}
	need := (ttl + ageStep - 1) / ageStep * ageStep
	// A stream update is not conditional: a node that read the limit
	// before another's update and sets less after it lowers the limit
	// again. So each node first records its need in a key of the bucket
	// itself, raised only by compare-and-set (the key holds the largest
	// need recorded), sets the limit to the recorded need, and after each
	// update reads the limit and then the key again. The last update is
	// then never below any need: its writer read the key after it landed
	// (a larger need recorded before that read sends the writer round
	// again), and a node recording its need after that read finds the
	// limit below it and raises it itself.
	target, ok := recordAgeNeed(ctx, s.kv, need)
	if !ok {
		return
	}
	for range ageAttempts {
		info, err := s.stream.Info(ctx)
		if err != nil {
			return
		}
		if info.Config.MaxAge == 0 || info.Config.MaxAge >= target {
			if recorded, ok := recordAgeNeed(ctx, s.kv, 0); ok && info.Config.MaxAge != 0 && recorded > info.Config.MaxAge {
				target = recorded // a larger need was recorded meanwhile
				continue
			}
			s.age.Store(int64(info.Config.MaxAge))
			return
		}
		cfg := info.Config
		cfg.MaxAge = target
		if _, err := t.js.UpdateStream(ctx, cfg); err != nil {
			return
		}
	}
}

// ageKey is the key of a legacy bucket that holds the largest age limit a
// node has asked for (a decimal count of nanoseconds). Keys the transport
// writes for callers never begin with '_' (kvKey escapes it).
const ageKey = "_age"

// recordAgeNeed raises the need recorded under ageKey in kv to at least
// need by compare-and-set and reports the need then recorded; need 0 only
// reads it. The key lives under the bucket's own age limit: when it has
// aged out, the limit it asked for was in place long enough for every
// node that read it.
func recordAgeNeed(ctx context.Context, kv jetstream.KeyValue, need time.Duration) (time.Duration, bool) {
	for range ageAttempts {
		e, err := kv.Get(ctx, ageKey)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			if need == 0 {
				return 0, true
			}
			if _, err := kv.Create(ctx, ageKey, []byte(strconv.FormatInt(int64(need), 10))); err == nil {
				return need, true
			}
			continue // created meanwhile, or refused: read again
		case err != nil:
			return 0, false
		}
		recorded, perr := strconv.ParseInt(string(e.Value()), 10, 64)
		if perr != nil || recorded < 0 {
			recorded = 0 // not ours: overwritten below
		}
		if time.Duration(recorded) >= need {
			return time.Duration(recorded), true
		}
		if _, err := kv.Update(ctx, ageKey, []byte(strconv.FormatInt(int64(need), 10)), e.Revision()); err == nil {
			return need, true
		}
	}
	return 0, false
}

// ageAttempts bounds the updates ensureAge makes for one write.
const ageAttempts = 8

// ageStep is what the age limit of a legacy record bucket is rounded to.
const ageStep = 10 * time.Minute

func (t *Transport) createBucket(ctx context.Context) (jetstream.KeyValue, error) {
	cfg := jetstream.KeyValueConfig{
		Bucket:         t.bucket,
		Description:    "tlsfarm: sealed sessions, revocations and ticket keys",
		History:        1,
		Replicas:       t.replicas(),
		LimitMarkerTTL: markerTTL, // enables per-message TTL
	}
	if t.opts.MemoryStorage {
		cfg.Storage = jetstream.MemoryStorage
	}
	kv, err := t.createKV(ctx, cfg)
	if err != nil && t.opts.Replicas == 0 && cfg.Replicas > 1 && tooFewPeers(err) {
		// A cluster too small for the default: settle for one replica.
		// Only then: a timeout, or a cluster busy electing its leader,
		// would otherwise leave the farm on one replica for good.
		slog.Warn("natsbus: the NATS cluster cannot place the farm's bucket on 3 servers; it has one replica (set replicas= to choose)",
			"bucket", t.bucket, "err", redact.Error(err, t.secrets))
		cfg.Replicas = 1
		kv, err = t.createKV(ctx, cfg)
	}
	if errors.Is(err, jetstream.ErrLimitMarkerTTLNotSupported) {
		// A server before 2.11: keys cannot expire on their own.
		cfg.LimitMarkerTTL = 0
		cfg.TTL = t.opts.LegacyMaxAge
		kv, err = t.createKV(ctx, cfg)
	}
	if errors.Is(err, jetstream.ErrBucketExists) {
		// Another node made it first (or it exists with other settings).
		kv, err = t.js.KeyValue(ctx, t.bucket)
	}
	return kv, err
}

// createKV creates the bucket cfg describes, asking again (up to
// createAttempts times, within ctx) while the server answers that it could
// not make the stream's store. That failure can pass: when an account's
// last stream is deleted, nats-server removes the emptied directories in
// the background, and a stream created at that moment finds its parent
// directory gone. A store the server cannot make for good (a full or
// read-only disk) still fails, after some 150 ms more.
func (t *Transport) createKV(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	for attempt := 1; ; attempt++ {
		kv, err := t.js.CreateKeyValue(ctx, cfg)
		if attempt == createAttempts || !storeFailed(err) {
			return kv, err
		}
		select {
		case <-ctx.Done():
			return kv, err
		case <-time.After(time.Duration(attempt) * 25 * time.Millisecond):
		}
	}
}

// createAttempts bounds the creates createKV makes.
const createAttempts = 4

// storeFailed reports whether err is JetStream's 500 answer to a stream
// create whose store could not be made (JSStreamCreateErrF, whose text the
// server then sets to "error creating store for stream").
func storeFailed(err error) bool {
	var api *jetstream.APIError
	return errors.As(err, &api) && api.Code == 500 && api.ErrorCode == 10049
}

// tooFewPeers reports whether err is JetStream's refusal to place a stream
// on more servers than its cluster has: no suitable peers for placement,
// insufficient resources, or replicas in a server that is not clustered.
func tooFewPeers(err error) bool {
	var api *jetstream.APIError
	if !errors.As(err, &api) {
		return false
	}
	switch api.ErrorCode {
	case 10005, // JSClusterNoPeersErrF
		10023, // JSInsufficientResourcesErr
		10074: // JSStreamReplicasNotSupportedErr
		return true
	}
	return false
}

// probeStreams asks the server, in the background and one probe at a time
// per bucket, for the info of s's streams (the farm's bucket and, on a
// server without per-message TTL, the records' bucket), and forgets s if
// either is gone, so that the next call makes them anew. A server that is
// merely slow or hung answers nothing here either, and s is kept.
func (t *Transport) probeStreams(s *bucketState) {
	if !s.probing.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer s.probing.Store(false)
		ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
		defer cancel()
		streams := []jetstream.Stream{s.stream}
		if s.records != nil && s.records != s {
			streams = append(streams, s.records.stream)
		}
		for _, st := range streams {
			if _, err := st.Info(ctx); errors.Is(err, jetstream.ErrStreamNotFound) {
				t.store.CompareAndSwap(s, nil)
				return
			}
		}
	}()
}

// probeTimeout bounds a probeStreams request.
const probeTimeout = 2 * time.Second

// replicas returns the replica count for a new bucket: Options.Replicas
// (or the URL's), else 3 on a cluster and 1 on a lone server.
func (t *Transport) replicas() int {
	switch {
	case t.opts.Replicas > 0:
		return t.opts.Replicas
	case t.nc.ConnectedClusterName() != "":
		return 3
	}
	return 1
}

// Replicas returns the number of replicas the farm's bucket has, opening
// (or creating) it if need be.
func (t *Transport) Replicas(ctx context.Context) (int, error) {
	s, err := t.open(ctx)
	if err != nil {
		return 0, err
	}
	info, err := s.stream.Info(ctx)
	if err != nil {
		return 0, t.check(s, "stream info", err)
	}
	return max(info.Config.Replicas, 1), nil
}

// check forgets the bucket after an error that says it is gone (a server
// restarted without its data, an operator deleted it), so that the next
// call makes it anew. It returns err, redacted and prefixed.
func (t *Transport) check(s *bucketState, op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrBucketNotFound) {
		t.store.CompareAndSwap(s, nil)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		// A server that lost the stream may say nothing at all: it
		// answers no direct get and no write for a stream it does not
		// have (nats-server restarted without its store), and every
		// request would time out for ever. Ask it, off the caller's
		// path, whether the streams are still there.
		t.probeStreams(s)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return fmt.Errorf("natsbus: %s: %w", op, err)
	}
	if unanswered(err) {
		// The client's own bounds (a publish's acknowledgement, a
		// request without a context): the server did not answer,
		// which the farm's hit gate tells from its refusals.
		return fmt.Errorf("natsbus: %s: %w (%v)", op, os.ErrDeadlineExceeded, err)
	}
	if notConnected(err) {
		// Not sent: the server could not be reached, which the farm's
		// hit gate tells from the server's refusals.
		return fmt.Errorf("natsbus: %s: %w (%v)", op, transport.ErrNotConnected, err)
	}
	return fmt.Errorf("natsbus: %s: %v", op, redact.Error(err, t.secrets))
}

// unanswered reports whether err, a request's, is the client's own
// timeout: no answer came within its bound.
func unanswered(err error) bool {
	return errors.Is(err, nats.ErrTimeout) || errors.Is(err, jetstream.ErrAsyncPublishTimeout) ||
		errors.Is(err, nats.ErrAsyncPublishTimeout)
}

// notConnected reports whether err, a request's, says that the client
// had no connection to send it on: reconnecting (with no buffer for
// requests meanwhile, see Open) or closed.
func notConnected(err error) bool {
	return errors.Is(err, nats.ErrReconnectBufExceeded) || errors.Is(err, nats.ErrConnectionClosed) ||
		errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, nats.ErrDisconnected) ||
		errors.Is(err, nats.ErrNoServers)
}

// NativeTTL reports whether the server expires the bucket's keys by their
// own TTL (nats-server 2.11 and later, with a bucket that allows it).
// Where it does not, expired keys read as absent but stay in the bucket
// until Options.LegacyMaxAge has passed.
func (t *Transport) NativeTTL(ctx context.Context) (bool, error) {
	s, err := t.open(ctx)
	if err != nil {
		return false, err
	}
	return s.native, nil
}
