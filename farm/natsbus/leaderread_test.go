package natsbus_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/natstest"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// A lagCluster is a NATS cluster of three servers (in the test's process)
// whose last one, n3, reaches the others only through proxies
// (natstest.StartClusterVia): frozen, they leave n3 behind its stream
// leaders while its clients still reach it.
type lagCluster struct {
	c      *natstest.Cluster
	routes []*nettest.Proxy
}

func startLagCluster(t *testing.T) *lagCluster {
	t.Helper()
	lc := &lagCluster{}
	lc.c = natstest.StartClusterVia(t, 3, func(addr string) string {
		p := nettest.NewProxy(t, addr)
		lc.routes = append(lc.routes, p)
		return p.Addr
	})
	return lc
}

// open opens a transport of one farm on n1 (w, the writer) and one on n3
// (r), and waits until w's bucket is open; with native, until it is one
// with per-message TTL, where the records and the coordination keys share
// the bucket. The context it returns ends after timeout, or with the test.
func (lc *lagCluster) open(t *testing.T, timeout time.Duration, native bool) (w, r *natsbus.Transport, ctx context.Context) {
	t.Helper()
	name := farmtest.FarmName(t)
	w = openURL(t, lc.url("n1"), name)
	r = openURL(t, lc.url("n3"), name)
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	t.Cleanup(cancel)
	farmtest.Eventually(t, 30*time.Second, "the bucket open", func() bool {
		perMsg, err := w.NativeTTL(ctx)
		return err == nil && (perMsg || !native)
	})
	return w, r, ctx
}

// url returns the client URL of the server named name alone.
func (lc *lagCluster) url(name string) string { return lc.c.Server(name).ClientURL() }

// freeze freezes n3's routes until thaw (or the test's end).
func (lc *lagCluster) freeze(t *testing.T) {
	for _, p := range lc.routes {
		p.Freeze()
		t.Cleanup(p.Thaw)
	}
}

func (lc *lagCluster) thaw() {
	for _, p := range lc.routes {
		p.Thaw()
	}
}

// follow makes n1 lead the stream of bucket (a direct get from a client
// on n1 is then answered on n1: one on a server that is not yet in the
// direct get group goes to another, n3 perhaps), and waits until n3, its
// follower, is current and answers the direct gets of tr, a transport on
// n3, itself: with its routes frozen, a plain read of a key comes back at
// once.
func (lc *lagCluster) follow(t *testing.T, tr *natsbus.Transport, bucket string) {
	t.Helper()
	stream := "KV_" + bucket
	n1, n3 := lc.c.Server("n1"), lc.c.Server("n3")
	nc, err := nats.Connect(lc.url("n1"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// The stream's leader is asked to hand over to n1 by name, at most
	// once a second: a leader on n2 or n3 stepped down at every poll (each
	// 5 ms) left the election to chance, and stepped down again a leader
	// just elected; a CI run under load found no settled n1 within 30 s.
	var asked time.Time
	farmtest.Eventually(t, 30*time.Second, "n1 leads the stream, and n3 is current", func() bool {
		if n1.JetStreamIsStreamLeader("$G", stream) {
			return n3.JetStreamIsStreamCurrent("$G", stream)
		}
		if time.Since(asked) < time.Second {
			return false
		}
		asked = time.Now()
		// Answered with an error while n1 cannot lead yet (not current,
		// or no leader to ask): asked again a second later.
		nc.Request("$JS.API.STREAM.LEADER.STEPDOWN."+stream, []byte(`{"placement":{"preferred":"n1"}}`), 2*time.Second)
		return false
	})
	farmtest.Eventually(t, 30*time.Second, "n3 answers direct gets itself", func() bool {
		lc.freeze(t)
		defer lc.thaw()
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		defer cancel()
		_, err := tr.Get(ctx, "absent")
		return errors.Is(err, transport.ErrNotFound)
	})
}

// TestClusterPrimaryReadsStreamLeader: a transport on n3 of a lagCluster
// reads what one on n1 wrote. Once n3's routes are frozen and n1 has
// written anew, n3's replica lags: a plain read is a direct get, which n3
// answers at once with what it had (nats-server 2.15 leaves a follower
// in the direct get group when it falls behind). A read under
// transport.PrimaryRead (GetRecord, Get, SetVersion) must not: it is
// answered by the stream's leader, once the routes thaw, with what n1
// wrote. Before the transport sent those reads to the leader, n3
// answered them at once with the old values.
func TestClusterPrimaryReadsStreamLeader(t *testing.T) {
	t.Parallel()
	lc := startLagCluster(t)
	name := farmtest.FarmName(t)
	w := openURL(t, lc.url("n1"), name)
	r := openURL(t, lc.url("n3"), name)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	// Plain writes only (a conditional one read first with a direct get
	// that could go to n3 and wait in its frozen routes, before
	// TestClusterConditionalWritesReadLeader). On a server
	// with per-message TTL the records and the coordination keys share
	// one bucket, so Get reads the key "g" that PutRecords writes.
	put := func(v string) {
		t.Helper()
		if err := w.PutRecords(ctx, transport.Item{Key: "s:01", Value: []byte(v), TTL: time.Minute},
			transport.Item{Key: "g", Value: []byte(v), TTL: time.Minute}); err != nil {
			t.Fatal(err)
		}
		if err := w.SetAdd(ctx, "set", []byte(v), time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	var native bool
	farmtest.Eventually(t, 30*time.Second, "the bucket open", func() bool {
		var err error
		native, err = w.NativeTTL(ctx)
		return err == nil
	})
	if !native {
		t.Fatal("the bucket has no per-message TTL")
	}
	put("old")
	lc.follow(t, r, w.Bucket())
	var oldVersion []byte
	farmtest.Eventually(t, 10*time.Second, "n3 has the old values", func() bool {
		v, err := r.GetRecord(ctx, "s:01")
		g, gerr := r.Get(ctx, "g")
		oldVersion, _ = r.SetVersion(ctx, "set")
		return err == nil && string(v) == "old" && gerr == nil && string(g) == "old" && oldVersion != nil
	})

	lc.freeze(t)
	put("new")
	// The premise: n3's replica lags, and answers plain reads. A direct
	// get goes to any member of the stream's direct get group, chosen at
	// random by the client's server (no preference for its own): n3's
	// answers at once, n1's and n2's are held in the frozen routes.
	answered := false
	for range 40 {
		rctx, rcancel := context.WithTimeout(ctx, 50*time.Millisecond)
		v, err := r.GetRecord(rctx, "s:01")
		rcancel()
		if err == nil && string(v) != "old" {
			t.Fatalf("plain GetRecord on n3 = %q; want old (n3's lagging replica) or a timeout", v)
		}
		if err == nil {
			answered = true
			break
		}
	}
	if !answered {
		t.Fatal("n3's replica answered none of 40 direct gets")
	}

	// Reads under PrimaryRead, several of each: a direct get would reach
	// n3's replica one time in three.
	type result struct {
		name string
		v    []byte
		err  error
	}
	reads := map[string]func(context.Context) ([]byte, error){
		"GetRecord":  func(ctx context.Context) ([]byte, error) { return r.GetRecord(ctx, "s:01") },
		"Get":        func(ctx context.Context) ([]byte, error) { return r.Get(ctx, "g") },
		"SetVersion": func(ctx context.Context) ([]byte, error) { return r.SetVersion(ctx, "set") },
	}
	const each = 10
	results := make(chan result, each*len(reads))
	pctx := transport.PrimaryRead(ctx)
	for name, read := range reads {
		for range each {
			go func() {
				v, err := read(pctx)
				results <- result{name, v, err}
			}()
		}
	}
	// While the routes are frozen, only n3 can answer: nothing may come.
	select {
	case res := <-results:
		t.Fatalf("%s under PrimaryRead answered %q, %v while n3's routes were frozen: n3's lagging replica answered it", res.name, res.v, res.err)
	case <-time.After(500 * time.Millisecond):
	}
	lc.thaw()
	for range each * len(reads) {
		res := <-results
		switch {
		case res.err != nil:
			t.Errorf("%s under PrimaryRead: %v", res.name, res.err)
		case res.name == "SetVersion" && bytes.Equal(res.v, oldVersion):
			t.Errorf("SetVersion under PrimaryRead = the version before the freeze")
		case res.name != "SetVersion" && string(res.v) != "new":
			t.Errorf("%s under PrimaryRead = %q; want new", res.name, res.v)
		}
	}
}

// openURL opens a transport for farmName at url, closed when the test
// ends.
func openURL(tb testing.TB, url, farmName string) *natsbus.Transport {
	tb.Helper()
	tr, err := natsbus.Open(url, farmName, nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { tr.Close() })
	return tr
}

// TestClusterLaggingFollowerGateReadsLeader: a broadcast, write-through
// farm of two nodes whose store is a lagCluster: n1 on its server n1 (bus
// and store), n2's store on n3, its bus a NATS server of its own behind a
// proxy, so that n2 hears nothing n1 publishes and its delivery lags once
// the proxy freezes: its hits are gated, and read the revocation marks
// from the store. n2 issues H and C, their records replicated to n3. Then
// n3's routes freeze (n3's replica lags; n2 still reaches n3), n2's bus
// stalls, and n1 revokes H, which it reports applied.
//
// n2 must not resume H. Its gate read H's marks with a direct get, which
// n3 answered from its lagging replica ("no mark"), and n2 resumed H.
// Once the routes thaw, n2 resumes C (its gate confirms C from the
// leader) and still not H.
func TestClusterLaggingFollowerGateReadsLeader(t *testing.T) {
	t.Parallel()
	const maxLag = 150 * time.Millisecond
	lc := startLagCluster(t)
	n1, n2, busPath := startGatedLagFarm(t, lc, maxLag, 0)
	dial := dialResumes(t)
	h, cs := &tlstest.FrozenCache{}, &tlstest.FrozenCache{}
	ids := farmtest.HandshakeSessions(n2.Cache)
	dial(n2, h)
	hid := ids()[len(ids())-1]
	dial(n2, cs)
	farmtest.Eventually(t, 5*time.Second, "n2 resumes H and C", func() bool { return dial(n2, h) && dial(n2, cs) })
	// H's record is in the store (its write-through may have outlasted
	// the handshake's short wait), and n3 has it.
	farmtest.Eventually(t, 10*time.Second, "H's record in the store", func() bool {
		ctx, cancel := context.WithTimeout(transport.PrimaryRead(t.Context()), time.Second)
		defer cancel()
		_, err := n1.Store.GetRecord(ctx, "s:"+hex.EncodeToString(hid[:]))
		return err == nil
	})
	stream := "KV_" + n2.Store.(*natsbus.Transport).Bucket()
	farmtest.Eventually(t, 10*time.Second, "n3 current", func() bool {
		return lc.c.Server("n3").JetStreamIsStreamCurrent("$G", stream)
	})

	lc.freeze(t)
	busPath.Freeze()
	t.Cleanup(busPath.Thaw)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if st, err := n1.Node.RevokeSession(ctx, hid); err != nil || st != farm.RevokeApplied {
		t.Fatalf("RevokeSession = %v, %v", st, err)
	}
	marker := n2.Bus.(transport.DeliveryMarker)
	farmtest.Eventually(t, 5*time.Second, "n2's delivery lags", func() bool {
		return time.Since(marker.DeliveredThrough()) > 2*maxLag
	})
	gated := func(result string) uint64 {
		return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_gated_hits_total", "result", result)
	}
	// A direct get reaches n3's replica one time in three (see
	// TestClusterPrimaryReadsStreamLeader), and the gate reads two marks:
	// so many dials that one of them would find no mark.
	for i := range 40 {
		if dial(n2, h) {
			t.Errorf("n2 resumed H (dial %d), revoked on n1 (applied): its gate read n3's lagging replica", i+1)
			break
		}
	}
	t.Logf("with n3's routes frozen, n2's gated hits: confirmed %d, revoked %d, store_error %d, cut_off %d",
		gated("confirmed"), gated("revoked"), gated("store_error"), gated("cut_off"))

	lc.thaw()
	farmtest.Eventually(t, 20*time.Second, "n2 resumes C", func() bool { return dial(n2, cs) })
	// The gate may still find no leader for a moment (n3, back, may
	// call an election): not resumed either way.
	farmtest.Eventually(t, 20*time.Second, "n2's gate finds H revoked", func() bool {
		if dial(n2, h) {
			t.Errorf("n2 resumed H once n3's routes thawed")
			return true
		}
		return gated("revoked") > 0
	})
	t.Logf("n2's gated hits: confirmed %d, revoked %d, store_error %d, cut_off %d",
		gated("confirmed"), gated("revoked"), gated("store_error"), gated("cut_off"))
	// The premise: n2's bus lagged, up, throughout; a bus found down
	// (and a read unanswered) lets a hit through as cut off.
	if f := farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_probe_failures_total"); f != 0 {
		t.Errorf("n2's probes failed %d times: its stalled bus was counted down", f)
	}
}

// startGatedLagFarm starts a broadcast, write-through farm of two nodes
// over lc: n1 uses server n1 for its bus and store; n2's store is on n3
// (whose routes the test may freeze) and its bus is the embedded server,
// behind the returned proxy, so that freezing it makes n2's delivery lag
// (maxLag) and gates its hits. n2's writes wait on rather than time out
// (a node whose writes go unanswered lets a gated hit through when its
// read goes unanswered too, as it does while n3's routes are frozen).
// heal, if not 0, is the farm's HealInterval. It returns once both nodes
// are connected, know the revocations, n2's store follows lc's stream,
// and n2's delivery is marked and current.
func startGatedLagFarm(t *testing.T, lc *lagCluster, maxLag, heal time.Duration) (n1, n2 *farmtest.Member, busPath *nettest.Proxy) {
	t.Helper()
	busPath = nettest.NewProxy(t, embeddedAddr(t))
	joined := 0
	ms, _ := farmtest.Start(t, 2, &farmtest.Options{
		NewTransport: func(tb testing.TB, farmName string) (transport.Bus, transport.Store) {
			joined++
			if joined == 1 {
				tr := openURL(tb, lc.url("n1"), farmName)
				return tr, tr
			}
			// The stalled bus must stay up, and lag, for the whole
			// test: not found stale by the client's pings (two
			// unanswered, 10–15 s with natsbus's 5 s interval) and
			// reconnected, nor by the node's bus probe. A bus that
			// is down and a store read unanswered let a gated hit
			// through as cut off, and n2 resumed H in a CI run whose
			// freeze outlasted them.
			bus, err := natsbus.Open("nats://"+busPath.Addr, farmName, &natsbus.Options{
				NATS: []nats.Option{nats.PingInterval(time.Hour)},
			})
			if err != nil {
				tb.Fatal(err)
			}
			tb.Cleanup(func() { bus.Close() })
			return bus, openURL(tb, lc.url("n3"), farmName)
		},
		Mode: farm.Broadcast, WriteThrough: true,
		Rotation: &farm.RotationConfig{Interval: time.Hour},
		// H and C, resumed before the freeze, must stay resumable
		// until after the thaw and the election that may follow it
		// (the freeze alone took 6.5 s under a CPU hog).
		TweakCache: func(c *session.Config) { c.ResumeGrace = 30 * time.Second },
		Tweak: func(cfg *farm.Config) {
			cfg.MaxDeliveryLag = maxLag
			if heal != 0 {
				cfg.HealInterval = heal
			}
			// A gated hit that cannot reach the stream's leader
			// gives up soon, and so does a handshake's wait for its
			// write-through.
			cfg.LookupTimeout = 150 * time.Millisecond
			cfg.WriteThroughTimeout = 20 * time.Millisecond
			if joined == 2 {
				cfg.OpTimeout = 30 * time.Second // n2's writes wait on
			}
			cfg.TallyInterval = -1
			// n2's stalled bus is not an outage (see
			// TestClusterReadOnlyGateReadsMaster in redisbus), however
			// long the test runs.
			cfg.ProbeTimeout = 5 * time.Minute
		},
	})
	lagFarmReady(t, lc, ms)
	// Until n2 reaches its first delivery mark, its subscription counts
	// as not up: a bus down, with which a gated read that times out
	// lets the hit through as cut off (the node reaching neither path).
	// The tests freeze a bus that is up, and lags: n2 resumed H on its
	// first dial into the freeze in 2 runs of 8 under a CPU hog, its
	// mark still zero.
	marker := ms[1].Bus.(transport.DeliveryMarker)
	farmtest.Eventually(t, 10*time.Second, "n2's delivery marked and current", func() bool {
		d := marker.DeliveredThrough()
		return !d.IsZero() && time.Since(d) < maxLag
	})
	return ms[0], ms[1], busPath
}

// lagFarmReady waits until the nodes ms (over lc) are connected and know
// the farm's revocations, and has lc follow n2's (ms[1]'s) bucket.
func lagFarmReady(t *testing.T, lc *lagCluster, ms []*farmtest.Member) {
	t.Helper()
	farmtest.WaitConnected(t, ms...)
	farmtest.WaitRevocationsKnown(t, ms...)
	store := ms[1].Store.(*natsbus.Transport)
	lc.follow(t, store, store.Bucket())
}

// dialResumes returns a function that dials m with a TLS 1.3 client whose
// session cache is cc and reports whether the handshake resumed.
func dialResumes(t *testing.T) func(m *farmtest.Member, cc tls.ClientSessionCache) bool {
	return func(m *farmtest.Member, cc tls.ClientSessionCache) bool {
		t.Helper()
		return tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, cc)).DidResume
	}
}

// embeddedAddr is embedded's server address, without the scheme.
func embeddedAddr(tb testing.TB) string {
	tb.Helper()
	u := embedded(tb)
	return u[len("nats://"):]
}
