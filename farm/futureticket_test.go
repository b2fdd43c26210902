package farm_test

import (
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestStatelessTicketFromNodeClockAhead: across farm nodes over Redis that
// share ticket keys, a stateless ticket issued by a node whose clock runs
// ahead resumes on another within the farm's MaxSkew (30 s here, which Join
// makes the caches' bound; a cache's own default is 5 s), and is refused
// beyond it: one issued an hour ahead (which would otherwise live an hour
// past Lifetime on every node) means a full handshake, counted as future.
func TestStatelessTicketFromNodeClockAhead(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	name := farmtest.FarmName(t)
	o := farmtest.Options{NewTransport: redisTransport(url), SessionMode: session.Stateless, Secret: farm.NewSecret(1),
		Rotation: &farm.RotationConfig{Interval: time.Hour},
		Tweak:    func(c *farm.Config) { c.MaxSkew = 30 * time.Second }}
	n2 := farmtest.Join(t, "n2", name, o)
	var refused uint64
	for _, tc := range []struct {
		node    string
		lead    time.Duration
		resumes bool
	}{
		{"n1", 20 * time.Second, true},
		{"n3", time.Hour, false},
	} {
		oa := o
		oa.TweakCache = func(c *session.Config) {
			c.Now = func() time.Time { return time.Now().Add(tc.lead) }
		}
		issuer := farmtest.Join(t, tc.node, name, oa)
		farmtest.WaitConnected(t, n2, issuer)
		agreed(t, []*farmtest.Member{n2, issuer}, 1)
		for _, tv := range versions {
			frozen := &tlstest.FrozenCache{}
			tlstest.MustDial(t, issuer.Server.Addr, farmtest.Client(tv.v, frozen))
			if got := tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tv.v, frozen)).DidResume; got != tc.resumes {
				t.Fatalf("%s: ticket from %s, %v ahead, resumed on n2 = %t, want %t", tv.name, tc.node, tc.lead, got, tc.resumes)
			}
			if !tc.resumes {
				refused++
			}
			if got := farmtest.Counter(n2.Cache.Metrics(), "tlsfarm_cache_tickets_total", "event", "future"); got != refused {
				t.Fatalf("%s: n2 counted %d tickets refused as future, want %d", tv.name, got, refused)
			}
		}
	}
	if got := n2.Cache.Config().MaxClockSkew; got != 30*time.Second {
		t.Fatalf("cache's MaxClockSkew after Join = %v, want the farm's MaxSkew, 30s", got)
	}
	farmtest.NoHandshakeErrors(t, []*farmtest.Member{n2})
}
