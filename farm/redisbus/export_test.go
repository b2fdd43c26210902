package redisbus

import (
	"testing"

	"github.com/redis/go-redis/v9"
)

// ID returns the transport's random ID.
func (t *Transport) ID() string { return t.id }

// Patterns returns the patterns the transport subscribes with.
func (t *Transport) Patterns() []string { return t.patterns }

// Shared reports whether the transport publishes on the farm's shared
// channel (an old node may listen there, or it has not counted yet).
func (t *Transport) Shared() bool { return t.Echo || t.shared.Load() }

// ExclusionPatterns is exclusionPatterns.
var ExclusionPatterns = exclusionPatterns

// SetSetPage sets how many members SetMembers reads with one script, for
// the rest of the test tb.
func SetSetPage(tb testing.TB, n int) {
	old := setPage
	setPage = n
	tb.Cleanup(func() { setPage = old })
}

// SubscriberReadsReplicas reports whether the client the transport
// subscribes on sends read-only commands, a subscription among them, to
// replicas.
func (t *Transport) SubscriberReadsReplicas() bool {
	cc, ok := t.subscriber().(*redis.ClusterClient)
	return ok && cc.Options().ReadOnly
}
