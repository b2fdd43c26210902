package natsbus

import (
	"context"
	"encoding/json"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// Where a read is answered. nats.go makes a key-value bucket's stream
// with direct gets allowed (AllowDirect), and reads it with them: a
// request on the subject $JS.API.DIRECT.GET.<stream>.<key> that every
// replica of the stream answers, in a queue group, so that the replica on
// the client's own server answers it. nats-server (2.15) lets a follower
// join the group once it has caught up with its leader, and takes it out
// only when the stream is stopped or its config changes: a follower whose
// server's routes are cut, frozen or slow answers with what it had, for as
// long as it lags. A read that decides one of the farm's promises
// (transport.PrimaryRead) must not take that for an answer, and goes to
// the stream's leader instead ($JS.API.STREAM.MSG.GET.<stream>, which only
// the leader answers): leaderLastMsg. A stream of one replica has no
// follower: its only replica is its leader, and answers every direct get,
// which costs less than the leader's get (see BenchmarkGetPrimary). The
// farm marks its session lookups PrimaryRead too (a record read from a
// lagging replica may be one a grace cut or a retirement has since
// shortened or removed), so that on such a bucket, the common one on a
// lone server, the lookups keep the direct get.

// lastMsg returns the last message on subj in bucket s: as the stream's
// leader has it for a read under transport.PrimaryRead (leaderLastMsg)
// on a stream of more than one replica, by a direct get for any other.
// The replica count is the stream's when the bucket was opened; a count
// of one is read again every replicasRecheck while such reads come: for
// that long at most after an operator adds replicas to a bucket of one,
// a new follower's answer may be taken.
func (t *Transport) lastMsg(ctx context.Context, s *bucketState, subj string) (*jetstream.RawStreamMsg, error) {
	return t.lastMsgFrom(ctx, s, subj, transport.IsPrimaryRead(ctx))
}

// lastMsgFrom is lastMsg, reading as under transport.PrimaryRead if
// primary is true, whatever ctx says: the read before a write conditional
// on the revision read (a take, a grace cut) asks for the leader's, which
// is the revision the leader will check the write against, without the
// cost of a context value a read.
func (t *Transport) lastMsgFrom(ctx context.Context, s *bucketState, subj string, primary bool) (*jetstream.RawStreamMsg, error) {
	if primary {
		if !s.lone.Load() {
			return t.leaderLastMsg(ctx, s, subj)
		}
		t.recheckReplicas(s)
	}
	return s.stream.GetLastMsgForSubject(ctx, subj)
}

// leaderGetTimeout bounds a leader's get under a context without a
// deadline, as nats.go bounds its own requests.
const leaderGetTimeout = 5 * time.Second

// leaderBound returns ctx bounded by leaderGetTimeout if it has no
// deadline (as nats.go bounds its own requests), and ctx itself
// otherwise: a request to the leader, and a conditional write, ask again
// per attempt (see leaderAttempt) within a deadline.
func leaderBound(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, leaderGetTimeout)
}

// The bounds of one attempt of a leader's get (see leaderAttempt).
const (
	leaderAttemptMin = 250 * time.Millisecond
	leaderAttemptMax = time.Second
)

// leaderAttempt returns how long one request of a leader's get may wait
// for its answer when left is what remains of the read's bound: a
// quarter of it, at least leaderAttemptMin and at most leaderAttemptMax,
// and never more than left. A request can be lost on its way to the
// leader or back: on nats-server 2.15, one sent into a route that is
// frozen (a server cut off from the rest) in the last second or so
// before it thaws, or just after, is never answered (see
// TestClusterLeaderReadsAnswerAfterThaw). A read that waited on it
// would wait all of its bound, tens of seconds for a heal; one that asks
// again waits at most an attempt more once the leader is reachable.
func leaderAttempt(left time.Duration) time.Duration {
	return min(left, max(leaderAttemptMin, min(left/4, leaderAttemptMax)))
}

// msgGetResponse is the answer to a $JS.API.STREAM.MSG.GET request.
type msgGetResponse struct {
	Error   *jetstream.APIError `json:"error,omitempty"`
	Message *struct {
		Subject  string    `json:"subject"`
		Sequence uint64    `json:"seq"`
		Header   []byte    `json:"hdrs,omitempty"`
		Data     []byte    `json:"data,omitempty"`
		Time     time.Time `json:"time"`
	} `json:"message,omitempty"`
}

// leaderLastMsg returns the last message on subj (which may hold
// wildcards) in bucket s as the leader of its stream holds it: a request
// of the JetStream API that a follower does not answer. Every write the
// server has acknowledged is there (the leader acknowledges a write once
// a quorum of replicas holds it). A server that cannot reach the leader
// answers nothing (the request fails at ctx's deadline), or that the
// stream has no leader: an error, never a follower's stale answer. A
// subject without a message is jetstream.ErrMsgNotFound; the server's
// refusals are *jetstream.APIError values, as nats.go returns them.
// A request not answered within its attempt (see leaderAttempt) is sent
// again, until ctx is done.
func (t *Transport) leaderLastMsg(ctx context.Context, s *bucketState, subj string) (*jetstream.RawStreamMsg, error) {
	ctx, cancel := leaderBound(ctx)
	defer cancel()
	req, err := json.Marshal(struct {
		LastFor string `json:"last_by_subj"`
	}{subj})
	if err != nil {
		return nil, err
	}
	msg, err := t.leaderRequest(ctx, "$JS.API.STREAM.MSG.GET."+s.name, req)
	if err != nil {
		return nil, err
	}
	var r msgGetResponse
	if err := json.Unmarshal(msg.Data, &r); err != nil {
		return nil, jetstream.ErrInvalidJetStreamResponse
	}
	if r.Error != nil {
		if r.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound {
			return nil, jetstream.ErrMsgNotFound
		}
		return nil, r.Error
	}
	m := r.Message
	if m == nil {
		return nil, jetstream.ErrInvalidJetStreamResponse
	}
	var hdr nats.Header
	if len(m.Header) > 0 {
		if hdr, err = nats.DecodeHeadersMsg(m.Header); err != nil {
			return nil, jetstream.ErrInvalidJetStreamResponse
		}
	}
	return &jetstream.RawStreamMsg{Subject: m.Subject, Sequence: m.Sequence, Header: hdr, Data: m.Data, Time: m.Time}, nil
}

// leaderRequest sends req to subj and returns the answer, asking again
// each time an attempt (see leaderAttempt) passes without one, until ctx,
// which has a deadline, is done. An attempt that fails otherwise ends it.
// It is askAgain's loop, written out: a leader's get is on the lookup's
// path, and through the closure it measured 95-100 µs against 91-95
// (BenchmarkGetCluster/primary, five runs each).
func (t *Transport) leaderRequest(ctx context.Context, subj string, req []byte) (*nats.Msg, error) {
	for {
		deadline, _ := ctx.Deadline()
		left := time.Until(deadline)
		attempt := leaderAttempt(left)
		if attempt >= left {
			// The last attempt: ctx bounds it.
			return t.nc.RequestWithContext(ctx, subj, req)
		}
		actx, cancel := context.WithTimeout(ctx, attempt)
		msg, err := t.nc.RequestWithContext(actx, subj, req)
		lost := actx.Err() != nil && ctx.Err() == nil
		cancel()
		if err == nil || !lost {
			return msg, err
		}
	}
}

// askAgain calls ask, which sends one request and waits for its answer
// until the context it is given is done, and calls it again each time an
// attempt (see leaderAttempt) passes without an answer, until ctx is
// done; the last attempt has what is left of ctx. Without a deadline on
// ctx it calls ask once, with ctx. Any other end of an attempt, an answer
// or a failure, is askAgain's. It is for requests that ask and change
// nothing, or whose repeat costs nothing that lasts.
func askAgain(ctx context.Context, ask func(context.Context) error) error {
	for {
		deadline, ok := ctx.Deadline()
		if !ok {
			return ask(ctx)
		}
		left := time.Until(deadline)
		attempt := leaderAttempt(left)
		if attempt >= left {
			// The last attempt: ctx bounds it.
			return ask(ctx)
		}
		actx, cancel := context.WithTimeout(ctx, attempt)
		err := ask(actx)
		lost := actx.Err() != nil && ctx.Err() == nil
		cancel()
		if err == nil || !lost {
			return err
		}
	}
}
