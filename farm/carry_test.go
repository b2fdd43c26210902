package farm_test

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// carryFarm is a broadcast write-through farm over the shared Redis whose
// nodes rotate ticket keys with the farm and carry their sessions in their
// tickets (Config.CarrySessions). The first len(px) members to join reach
// Redis (bus and store) through their own nettest.Proxy.
type carryFarm struct {
	o    *farmtest.Options
	name string
	ms   []*farmtest.Member
	px   []*nettest.Proxy
}

func startCarryFarm(t *testing.T, nodes, proxied int, grace time.Duration, tweak func(*farm.Config), closeServer ...bool) *carryFarm {
	t.Helper()
	return startCarryFarmOn(t, redistest.URL(t), nodes, proxied, grace, tweak, closeServer...)
}

// startCarryFarmOn is startCarryFarm on the Redis at url (a private
// redistest.Server's, for the tests that kill it).
func startCarryFarmOn(t *testing.T, url string, nodes, proxied int, grace time.Duration, tweak func(*farm.Config), closeServer ...bool) *carryFarm {
	t.Helper()
	addr := strings.TrimPrefix(url, "redis://")
	if i := strings.IndexByte(addr, '/'); i >= 0 {
		addr = addr[:i]
	}
	f := &carryFarm{}
	for range proxied {
		f.px = append(f.px, nettest.NewProxy(t, addr))
	}
	joined := 0
	f.o = &farmtest.Options{
		Mode: farm.Broadcast, WriteThrough: true,
		Rotation: &farm.RotationConfig{Interval: time.Hour},
		NewTransport: func(tb testing.TB, farmName string) (transport.Bus, transport.Store) {
			u := url
			if joined < len(f.px) {
				u = strings.Replace(url, addr, f.px[joined].Addr, 1)
			}
			joined++
			return redisTransport(u)(tb, farmName)
		},
		TweakCache: func(c *session.Config) { c.ResumeGrace = grace },
		Tweak: func(c *farm.Config) {
			c.CarrySessions = true
			c.MaxSkew = 100 * time.Millisecond
			c.WriteThroughTimeout = 2 * time.Second
			c.OpTimeout = 10 * time.Second // a frozen node's writes must not time out
			// Nor its probes: a frozen issuer that counts itself cut
			// off (within ProbeInterval + ProbeTimeout, 1.3 s by
			// default, which a loaded machine can take between a
			// test's Freeze and its handshake) issues farm tickets,
			// not the carried sessions under test.
			c.ProbeTimeout = 10 * time.Second
			c.TallyInterval = -1
			if tweak != nil {
				tweak(c)
			}
		},
	}
	f.o.CloseServer = len(closeServer) > 0 && closeServer[0]
	f.ms, f.name = farmtest.Start(t, nodes, f.o)
	// Past MaxSkew after each node began to reach the farm.
	time.Sleep(300 * time.Millisecond)
	return f
}

func carried(m *farmtest.Member, result string) uint64 {
	return farmtest.Counter(m.Node.Metrics(), "tlsfarm_farm_carried_total", "result", result)
}

func dialAs(t *testing.T, m *farmtest.Member, sni string, c tls.ClientSessionCache) tls.ConnectionState {
	t.Helper()
	_, pool := tlstest.SharedCert()
	return tlstest.MustDial(t, m.Server.Addr, tlstest.ClientConfig(pool, sni, tls.VersionTLS13, c))
}

// TestCarriedResumesWhileIssuerFrozen: a session issued on n1 resumes on
// n2 at once while n1's path to the farm (bus and store) is frozen, from
// the copy its ticket carries (under its own server name only); after the
// thaw nothing diverges: the store holds the session cut to its grace, n1
// holds it cut, and past the grace it resumes nowhere, nor on n3, which
// joins then and can only load it from the store.
func TestCarriedResumesWhileIssuerFrozen(t *testing.T) {
	t.Parallel()
	const grace = 1500 * time.Millisecond
	f := startCarryFarm(t, 2, 1, grace, nil)
	n1, n2 := f.ms[0], f.ms[1]
	f.px[0].Freeze()
	thawed := false
	t.Cleanup(func() {
		if !thawed {
			f.px[0].Thaw()
		}
	})
	ids := farmtest.HandshakeSessions(n1.Cache)
	c := &tlstest.FrozenCache{}
	if dialAs(t, n1, "a.example", c).DidResume {
		t.Fatal("first handshake resumed")
	}
	s := ids()[0]
	// Under another server name: refused, at once.
	if dialAs(t, n2, "b.example", c).DidResume {
		t.Fatal("n2 resumed the carried session under another server name")
	}
	start := time.Now()
	if !dialAs(t, n2, "a.example", c).DidResume {
		t.Fatalf("n2 did not resume n1's session while n1 was frozen (carried: %d admitted, %d refused, %d old)",
			carried(n2, "admitted"), carried(n2, "refused"), carried(n2, "old"))
	}
	resumedAt := time.Now()
	if d := resumedAt.Sub(start); d > 90*time.Millisecond {
		t.Logf("resumption on n2 took %v", d)
	}
	if got := carried(n2, "admitted"); got != 1 {
		t.Fatalf("n2 admitted %d carried copies, want 1", got)
	}
	time.Sleep(200 * time.Millisecond)
	f.px[0].Thaw()
	thawed = true

	// The store's record ends by the grace; so does n1's copy.
	rc := redis.NewClient(mustParseRedis(t, redistest.URL(t)))
	t.Cleanup(func() { rc.Close() })
	farmtest.Eventually(t, 10*time.Second, "n1 wrote S and its cut reached the store", func() bool {
		ttl, ok := storedTTL(t, rc, n1, s)
		return ok && ttl <= grace
	})
	farmtest.Eventually(t, 10*time.Second, "n1 cut S", func() bool {
		r, ok := lookup(n1.Cache, s)
		return !ok || !r.Expires.After(resumedAt.Add(grace+time.Second))
	})
	time.Sleep(time.Until(resumedAt.Add(grace + 200*time.Millisecond)))
	for _, m := range f.ms {
		if dialAs(t, m, "a.example", c).DidResume {
			t.Errorf("%s resumed S past its grace", m.Name)
		}
	}
	n3 := farmtest.Join(t, "n3", f.name, *f.o)
	farmtest.WaitConnected(t, n3)
	if dialAs(t, n3, "a.example", c).DidResume {
		t.Error("n3, joining late, resumed S past its grace")
	}
}

// TestCarriedRefusedWhenRetired: a young session retired on n1 (a child
// replaced by a newer one, bounded children) is not resumed from its
// carried copy on n2, which heard the retirement and holds no copy.
func TestCarriedRefusedWhenRetired(t *testing.T) {
	t.Parallel()
	f := startCarryFarm(t, 2, 0, 10*time.Second, nil)
	n1, n2 := f.ms[0], f.ms[1]
	p := &tlstest.FrozenCache{}
	dialAs(t, n1, "localhost", p)
	// C1: P resumed on n1, its ticket kept apart.
	cs, _ := p.Get("")
	c1 := &tlstest.SharedCache{}
	c1.Put("", cs)
	ids := farmtest.HandshakeSessions(n1.Cache)
	if !dialAs(t, n1, "localhost", c1).DidResume {
		t.Fatal("P did not resume on n1")
	}
	kid := ids()[0]
	// C2: P resumed again within its grace: C1 is retired.
	if !dialAs(t, n1, "localhost", p).DidResume {
		t.Fatal("P did not resume again on n1")
	}
	farmtest.Eventually(t, 5*time.Second, "n2 dropped C1", func() bool {
		_, ok := lookup(n2.Cache, kid)
		return !ok && farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_lifecycle_total", "event", "retire_received") > 0
	})
	if dialAs(t, n2, "localhost", c1).DidResume {
		t.Fatalf("n2 resumed the retired C1 (carried: %d admitted, %d refused)", carried(n2, "admitted"), carried(n2, "refused"))
	}
	if carried(n2, "refused") == 0 {
		t.Fatal("n2 did not refuse C1's carried copy")
	}
}

// TestCarriedRefusedWhenRevoked: a young session whose chain was revoked
// resumes from its carried copy on no node.
func TestCarriedRefusedWhenRevoked(t *testing.T) {
	t.Parallel()
	f := startCarryFarm(t, 3, 0, 10*time.Second, nil)
	n1 := f.ms[0]
	ids := farmtest.HandshakeSessions(n1.Cache)
	c := &tlstest.FrozenCache{}
	dialAs(t, n1, "localhost", c)
	s := ids()[0]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if st, err := n1.Node.RevokeSession(ctx, s); err != nil || st != farm.RevokeApplied {
		t.Fatalf("RevokeSession = %v, %v", st, err)
	}
	for _, m := range f.ms[1:] {
		farmtest.Eventually(t, 5*time.Second, m.Name+" dropped S", func() bool { _, ok := lookup(m.Cache, s); return !ok })
	}
	for _, m := range f.ms {
		if dialAs(t, m, "localhost", c).DidResume {
			t.Errorf("%s resumed a revoked session", m.Name)
		}
	}
	for _, m := range f.ms {
		if n := farmtest.Counter(m.Cache.Metrics(), "tlsfarm_cache_carried_total", "result", "admitted"); n != 0 {
			t.Errorf("%s resumed %d carried copies", m.Name, n)
		}
	}
}

// TestCarriedGraceCut: a young parent P, issued on n1 whose path is
// frozen, resumed on n2 from its carried copy: presented to n3 past its
// grace, it does not resume, whether n3 has heard of P or only of the
// child (n1 still frozen), or of both (after the thaw).
func TestCarriedGraceCut(t *testing.T) {
	t.Parallel()
	const grace = 400 * time.Millisecond
	for _, thaw := range []bool{false, true} {
		t.Run(map[bool]string{false: "child only", true: "both"}[thaw], func(t *testing.T) {
			f := startCarryFarm(t, 3, 1, grace, nil)
			n1, n2, n3 := f.ms[0], f.ms[1], f.ms[2]
			f.px[0].Freeze()
			defer f.px[0].Thaw()
			c := &tlstest.FrozenCache{}
			dialAs(t, n1, "localhost", c)
			if !dialAs(t, n2, "localhost", c).DidResume {
				t.Fatal("n2 did not resume P from its carried copy")
			}
			at := time.Now()
			if thaw {
				f.px[0].Thaw()
			}
			time.Sleep(time.Until(at.Add(grace + 100*time.Millisecond)))
			if dialAs(t, n3, "localhost", c).DidResume {
				t.Fatal("n3 resumed P past its grace")
			}
		})
	}
}

// TestCarriedOutage: while n2 cannot reach the farm it admits no carried
// copy; once back, a copy issued before its return is refused (it resumes,
// if at all, from the store), and one issued after is admitted.
func TestCarriedOutage(t *testing.T) {
	t.Parallel()
	f := startCarryFarm(t, 2, 2, 10*time.Second, func(c *farm.Config) {
		c.ProbeInterval = 100 * time.Millisecond
		// Young long enough to outlast n2's return on a loaded machine
		// (the bus's reconnect backoff): refused then for the gap, not
		// for its age.
		c.WriteThroughTimeout = 8 * time.Second
	})
	n1, n2 := f.ms[0], f.ms[1]
	f.px[1].Cut()
	farmtest.Eventually(t, 5*time.Second, "n2 knows it is cut off", func() bool { return !n2.Node.Connected() })
	before := &tlstest.FrozenCache{}
	f.px[0].Freeze() // n1's copy reaches n2 only in its ticket
	dialAs(t, n1, "localhost", before)
	dialAs(t, n2, "localhost", before)
	if got := carried(n2, "admitted"); got != 0 {
		t.Fatalf("n2 admitted %d carried copies while cut off", got)
	}
	if carried(n2, "cut_off") == 0 {
		t.Fatal("n2 was not asked, or did not say it was cut off")
	}
	f.px[0].Thaw()
	// Issued while n2 is away, and carried: on a loaded machine n1 may
	// have counted itself cut off while frozen, and issues bare IDs until
	// it reaches the farm again.
	var mid *tlstest.FrozenCache
	ids := farmtest.HandshakeSessions(n1.Cache)
	farmtest.Eventually(t, 10*time.Second, "n1 issued a carried ticket after the thaw", func() bool {
		issued := farmtest.Counter(n1.Cache.Metrics(), "tlsfarm_cache_carried_total", "result", "issued")
		mid = &tlstest.FrozenCache{}
		dialAs(t, n1, "localhost", mid)
		return farmtest.Counter(n1.Cache.Metrics(), "tlsfarm_cache_carried_total", "result", "issued") > issued
	})
	// Its message must have gone before n2 is back: published after
	// n2's return (n1's flush window), it would reach n2, which would
	// then hold the session rather than be asked about its copy. The
	// record is written with the message.
	s := ids()
	waitStored(t, n1, s[len(s)-1])
	f.px[1].Restore()
	farmtest.Eventually(t, 10*time.Second, "n2 is back", func() bool { return n2.Node.Connected() })
	time.Sleep(300 * time.Millisecond) // its probes answered again: it reaches the farm
	f.px[0].Freeze()
	dialAs(t, n2, "localhost", mid)
	if got := carried(n2, "admitted"); got != 0 {
		t.Fatalf("n2 admitted a copy issued before its return")
	}
	if carried(n2, "gap") == 0 {
		t.Fatalf("n2 did not refuse the copy issued before its return as a gap (old %d, cut_off %d, lagging %d, off %d, refused %d; cache carried refused %d, unopenable %d)", carried(n2, "old"), carried(n2, "cut_off"), carried(n2, "lagging"), carried(n2, "off"), carried(n2, "refused"), farmtest.Counter(n2.Cache.Metrics(), "tlsfarm_cache_carried_total", "result", "refused"), farmtest.Counter(n2.Cache.Metrics(), "tlsfarm_cache_carried_total", "result", "unopenable"))
	}
	time.Sleep(300 * time.Millisecond) // past MaxSkew
	after := &tlstest.FrozenCache{}
	dialAs(t, n1, "localhost", after)
	if !dialAs(t, n2, "localhost", after).DidResume || carried(n2, "admitted") != 1 {
		t.Fatalf("n2 did not admit a copy issued after its return (admitted %d)", carried(n2, "admitted"))
	}
	f.px[0].Thaw()
}

// TestCarriedOpenSSL: a session openssl saved from n1, whose path to the
// farm is frozen, resumes on n2 from the copy its ticket carries.
func TestCarriedOpenSSL(t *testing.T) {
	t.Parallel()
	f := startCarryFarm(t, 2, 1, 10*time.Second, nil, true)
	n1, n2 := f.ms[0], f.ms[1]
	f.px[0].Freeze()
	defer f.px[0].Thaw()
	sess := tlstest.SessionFile(t)
	out := tlstest.OpenSSL(t, n1.Server.Addr, "-tls1_3", "-servername", "localhost", "-sess_out", sess)
	if strings.Contains(out, "Reused, ") {
		t.Fatal("openssl's first connection resumed")
	}
	out = tlstest.OpenSSL(t, n2.Server.Addr, "-tls1_3", "-servername", "localhost", "-sess_in", sess)
	if !strings.Contains(out, "Reused, ") {
		t.Fatalf("openssl's session from n1 did not resume on n2 (carried: %d admitted)", carried(n2, "admitted"))
	}
}

// TestCarriedNotPastGrace: a carried copy is taken only while its ID is
// younger than the grace too. P, issued on n1 (frozen), resumed on n2 from
// its copy, whose path is then frozen too so that its child reaches no
// one: n3, which holds neither P nor the child, is presented P past its
// grace, while P is still young for write-through: it does not resume.
func TestCarriedNotPastGrace(t *testing.T) {
	t.Parallel()
	const grace = 300 * time.Millisecond
	f := startCarryFarm(t, 3, 2, grace, nil)
	n1, n2, n3 := f.ms[0], f.ms[1], f.ms[2]
	f.px[0].Freeze()
	defer f.px[0].Thaw()
	c := &tlstest.FrozenCache{}
	dialAs(t, n1, "localhost", c)
	f.px[1].Freeze()
	defer f.px[1].Thaw()
	if !dialAs(t, n2, "localhost", c).DidResume {
		t.Fatal("n2 did not resume P from its carried copy")
	}
	at := time.Now()
	time.Sleep(time.Until(at.Add(grace + 50*time.Millisecond)))
	if dialAs(t, n3, "localhost", c).DidResume {
		t.Fatal("n3 resumed P past its grace from its carried copy")
	}
	if carried(n3, "old") == 0 {
		t.Fatal("n3 did not refuse P's copy as too old")
	}
}
