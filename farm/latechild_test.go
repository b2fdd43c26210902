package farm_test

import (
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestLateSealedOldChildCutsFromIssue: a child that reaches a peer in a
// message older than MaxAge (receiveOldSessions) cuts its parent to the
// grace counted from the child's issue time, not from the message's seal.
// The farm has no store, only Redis as its bus, so a grace cut travels
// with the child alone. n1 resumes the parent while its Redis is cut off,
// so the child waits in its backlog and is sealed seconds after it was
// issued; n2's Redis connection is then held (a proxy frozen) until that
// message is older than MaxAge. By then the grace counted from the issue
// has passed, but not the one counted from the seal: n2 must not resume
// the parent. Also when n1, which issues the child, has a longer Lifetime
// than n2: the child's expiry less n2's Lifetime is then later than its
// issue, and before, n2 counted the grace from the seal again.
func TestLateSealedOldChildCutsFromIssue(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	for _, tc := range []struct {
		name         string
		life1, life2 time.Duration // n1's and n2's Lifetime; 0: the default
	}{
		{name: "same Lifetime"},
		{name: "minter's Lifetime longer", life1: time.Hour, life2: 30 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			lateSealedOldChild(t, url, tc.life1, tc.life2)
		})
	}
}

func lateSealedOldChild(t *testing.T, url string, life1, life2 time.Duration) {
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	px1, px2 := nettest.NewProxy(t, opt.Addr), nettest.NewProxy(t, opt.Addr)
	const (
		grace  = 3 * time.Second
		maxAge = time.Second
		held   = grace + time.Second // how long after the resumption n1 publishes
	)
	o := farmtest.Options{
		Secret: farm.NewSecret(1),
		// No probe or tally while the proxy holds n2's bytes: the delay
		// must look like a slow bus, not an outage to catch up from.
		Tweak: func(c *farm.Config) { c.TallyInterval = -1; c.ProbeInterval = time.Hour; c.MaxAge = maxAge },
	}
	name := farmtest.FarmName(t)
	o.NewTransport = busOnly(strings.Replace(url, opt.Addr, px1.Addr, 1))
	o.TweakCache = func(c *session.Config) { c.ResumeGrace, c.Lifetime = grace, life1 }
	n1 := farmtest.Join(t, "n1", name, o)
	o.NewTransport = busOnly(strings.Replace(url, opt.Addr, px2.Addr, 1))
	o.TweakCache = func(c *session.Config) { c.ResumeGrace, c.Lifetime = grace, life2 }
	n2 := farmtest.Join(t, "n2", name, o)
	farmtest.WaitConnected(t, n1, n2)

	ids, cs := farmtest.Issue(t, n1, 1)
	parent := ids[0]
	farmtest.Eventually(t, 5*time.Second, "n2 holds the parent", func() bool {
		_, ok := lookup(n2.Cache, parent)
		return ok
	})

	px1.Cut()
	resumed := time.Now()
	if !tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, cs[0])).DidResume {
		px1.Restore()
		t.Fatal("the parent did not resume on n1")
	}
	time.Sleep(time.Until(resumed.Add(held)))
	px2.Freeze()
	published := func() uint64 {
		return farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_published_total", "kind", "session")
	}
	before := published()
	px1.Restore()
	farmtest.Eventually(t, 20*time.Second, "n1 published the child", func() bool { return published() > before })
	sealed := time.Now() // the child's message was sealed no later
	if sealed.Sub(resumed) < held {
		px2.Thaw()
		t.Fatalf("n1 published the child %v after the resumption, want at least %v", sealed.Sub(resumed), held)
	}
	time.Sleep(maxAge + 500*time.Millisecond)
	px2.Thaw()
	farmtest.Eventually(t, 10*time.Second, "the child's message reached n2", func() bool {
		return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_old_sessions_total") >= 1
	})
	if r, ok := lookup(n2.Cache, parent); ok {
		t.Errorf("n2 holds the parent until %v: the grace counted from the seal, not from the child's issue (%v)", r.Expires, resumed)
	}
	if tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, cs[0])).DidResume {
		t.Fatal("n2 resumed the parent past its grace: the late-sealed child lengthened it")
	}
}
