package natsbus

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// now returns the server's clock as last measured by Time: ours, corrected
// by the offset seen then (none before the first call).
func (t *Transport) now() time.Time {
	return time.Now().Add(time.Duration(t.offset.Load()))
}

// Time implements transport.Coordinator with the server's clock: the time stamp on
// the bucket's stream information (nats-server 2.10+), or else the time
// stamp the server puts on a message written to the key "_clock" and read
// back. The offset from the local clock is kept, to judge expiry between
// calls.
func (t *Transport) Time(ctx context.Context) (time.Time, error) {
	s, err := t.open(ctx)
	if err != nil {
		return time.Time{}, err
	}
	var server, end time.Time
	start := time.Now()
	if !s.noInfoTime.Load() {
		// The stream's leader answers: a request lost in a route
		// (see leaderAttempt) is asked again.
		var info *jetstream.StreamInfo
		err := askAgain(ctx, func(actx context.Context) error {
			var err error
			start = time.Now()
			info, err = s.stream.Info(actx)
			return err
		})
		if err != nil {
			return time.Time{}, t.check(s, "time", err)
		}
		server, end = info.TimeStamp, time.Now()
		s.noInfoTime.Store(server.IsZero())
	}
	if server.IsZero() {
		start = time.Now()
		m, opts := t.message(s, clockKey, encodeValue(0, nil), 0)
		if _, err := t.js.PublishMsg(ctx, m, opts...); err != nil {
			return time.Time{}, t.check(s, "time", err)
		}
		end = time.Now()
		raw, err := s.stream.GetLastMsgForSubject(ctx, s.pre+clockKey)
		if err != nil {
			return time.Time{}, t.check(s, "time", err)
		}
		server = raw.Time
	}
	// Assume the server read its clock half way through the round trip.
	mid := start.Add(end.Sub(start) / 2)
	t.offset.Store(int64(server.Sub(mid)))
	return server, nil
}
