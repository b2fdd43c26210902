package farm_test

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestDelayedChildKeepsGraceCut: a peer cuts a resumed parent to its grace
// counted from when the child was issued, not from when the child's message
// arrived. n2 reaches Redis through a proxy that holds every byte (as
// someone on the bus who delays the message would) while n1 resumes the
// parent, and until the parent's grace has passed; once the child arrives,
// n2 must not resume the parent.
func TestDelayedChildKeepsGraceCut(t *testing.T) {
	t.Parallel()
	url, px, via := proxiedRedis(t)
	const grace = time.Second
	o := farmtest.Options{
		NewTransport: redisTransport(url),
		Secret:       farm.NewSecret(1),
		TweakCache:   func(c *session.Config) { c.ResumeGrace = grace },
		// No probe or tally while the proxy holds n2's bytes: the delay
		// must look like a slow bus, not an outage to catch up from.
		Tweak: func(c *farm.Config) { c.TallyInterval = -1; c.ProbeInterval = time.Hour },
	}
	name := farmtest.FarmName(t)
	n1 := farmtest.Join(t, "n1", name, o)
	o.NewTransport = redisTransport(via)
	n2 := farmtest.Join(t, "n2", name, o)
	farmtest.WaitConnected(t, n1, n2)
	arrived := farmtest.NewSessions(n2.Cache)

	ids, cs := farmtest.Issue(t, n1, 1)
	parent := ids[0]
	farmtest.Eventually(t, 5*time.Second, "n2 holds the parent", func() bool {
		_, ok := lookup(n2.Cache, parent)
		return ok
	})

	px.Freeze()
	if !tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, cs[0])).DidResume {
		px.Thaw()
		t.Fatal("the parent did not resume on n1")
	}
	time.Sleep(grace + 500*time.Millisecond)
	px.Thaw()
	farmtest.Eventually(t, 10*time.Second, "the child reached n2", func() bool {
		return len(arrived()) >= 2
	})
	if r, ok := lookup(n2.Cache, parent); ok {
		t.Errorf("n2 holds the parent until %v, past its grace (now %v)", r.Expires, time.Now())
	}
	if tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, cs[0])).DidResume {
		t.Fatal("n2 resumed the parent past its grace: the delayed child's message lengthened it")
	}
}
