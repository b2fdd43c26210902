package farmtest

import (
	"cmp"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/metric"
	"github.com/tlsfarm/tlsfarm/session"
	"github.com/tlsfarm/tlsfarm/ticket"
)

// A Member is one server of a test farm: a TLS server (with the certificate
// of tlstest.SharedCert) with its own session cache, farm node and
// transport.
type Member struct {
	Name   string          // as given to Join (n1, n2, ... by Start)
	Cache  *session.Cache  // the server's session cache
	Node   *farm.Node      // the cache's farm node
	Server *tlstest.Server // the TLS server
	Bus    transport.Bus   // from Options.NewTransport
	Store  transport.Store // from Options.NewTransport; nil for a transport without one

	// With Options.Rotation: the member's ticket key ring, its rotator,
	// and Crash, which stops the rotator as a crash would.
	Ring    *ticket.Ring
	Rotator *farm.Rotator
	Crash   context.CancelFunc
}

// Options configure the members of a test farm.
type Options struct {
	// NewTransport opens a member's bus and store (nil for none) for farm
	// farmName, closing them when the test ends.
	NewTransport func(t testing.TB, farmName string) (transport.Bus, transport.Store)

	Mode         farm.Mode            // the nodes' farm.Config.Mode
	WriteThrough bool                 // the nodes' farm.Config.WriteThrough
	Secret       farm.Secret          // Start makes one if unset
	Tweak        func(*farm.Config)   // if set, edits each node's configuration last
	SessionMode  session.Mode         // the members' session caches' mode
	Rotation     *farm.RotationConfig // if set, each member rotates ticket keys with the farm
	// ReadyWait is how long Join waits for the farm's ticket keys
	// (Rotator.WaitReady) before it serves: 5 s if 0. A test whose
	// member cannot get them at Join, by design, sets it short.
	ReadyWait   time.Duration
	Logger      *slog.Logger // default: discard
	CloseServer bool         // serve with tlstest.ServeAndClose (for openssl)
	// NoHandshakeComplete serves without calling Cache.HandshakeComplete
	// after each handshake, as a server that never heard of it would.
	NoHandshakeComplete bool
	TweakCache          func(*session.Config) // if set, edits each member's cache configuration
}

// Join starts member name of farm farmName, stopped when the test ends. It
// does not wait for the member's node to subscribe (see WaitConnected).
func Join(t testing.TB, name, farmName string, o Options) *Member {
	t.Helper()
	cc := session.Config{Mode: o.SessionMode}
	if o.TweakCache != nil {
		o.TweakCache(&cc)
	}
	cache, err := session.New(&cc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cache.Close() })
	bus, store := o.NewTransport(t, farmName)
	cfg := farm.Config{
		Farm:          farmName,
		NodeName:      name,
		Secrets:       []farm.Secret{o.Secret},
		Cache:         cache,
		Bus:           bus,
		Store:         store,
		Mode:          o.Mode,
		WriteThrough:  o.WriteThrough,
		LookupTimeout: 100 * time.Millisecond, // survives -race on a busy 2-core machine
		// Generous: under -race a loaded machine can hold a write back.
		WriteThroughTimeout: 500 * time.Millisecond,
		Logger:              o.Logger,
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Tweak != nil {
		o.Tweak(&cfg)
	}
	node, err := farm.Join(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	cert, _ := tlstest.SharedCert()
	tcfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	m := &Member{Name: name, Cache: cache, Node: node, Bus: bus, Store: store}
	if o.Rotation != nil {
		m.Ring, err = ticket.NewRing(ticket.RingConfig{Logger: cfg.Logger})
		if err != nil {
			t.Fatal(err)
		}
		m.Ring.Register(tcfg)
		rc := *o.Rotation
		rc.Ring = m.Ring
		var rctx context.Context
		rctx, m.Crash = context.WithCancel(context.Background())
		m.Rotator, err = node.RotateTicketKeys(rctx, rc)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Rotator.Close() })
		// Ready means ready: serve once the farm's keys are here (or
		// the store is found unreachable), as the daemon does.
		wctx, cancel := context.WithTimeout(context.Background(), cmp.Or(o.ReadyWait, 5*time.Second))
		m.Rotator.WaitReady(wctx)
		cancel()
	}
	cache.Install(tcfg)
	onHandshake := cache.HandshakeComplete
	if o.NoHandshakeComplete {
		onHandshake = nil
	}
	if o.CloseServer {
		m.Server = tlstest.ServeAndClose(t, name, tcfg, onHandshake)
	} else {
		m.Server = tlstest.Serve(t, name, tcfg, onHandshake)
	}
	return m
}

// Start starts n members (n1, n2, ...) of a fresh farm and waits until all
// are subscribed and know the farm's revocations (Join waits for that read
// only OpTimeout: a loaded machine may leave it to the next heal, and until
// then a node resumes nothing from the farm), then for Started. It returns
// the farm's name, and fills in o.Secret if it is unset.
func Start(t testing.TB, n int, o *Options) ([]*Member, string) {
	t.Helper()
	name := FarmName(t)
	if o.Secret.Bytes == nil {
		o.Secret = farm.NewSecret(1)
	}
	var ms []*Member
	for i := range n {
		ms = append(ms, Join(t, fmt.Sprintf("n%d", i+1), name, *o))
	}
	WaitConnected(t, ms...)
	WaitRevocationsKnown(t, ms...)
	if Started != nil {
		Started(t, ms)
	}
	return ms, name
}

// Started, if set, is called by Start once its members are subscribed, to
// wait for more of what each node does in the background soon after it
// joins. The farm package's own tests set it to wait until every node with
// a store has read the store's generation record (which they can see, and
// other packages cannot): a node finds that the store lost its data by
// that record's change, so a test that empties the store before the read
// (a loaded machine may leave it until after the test's first steps)
// tests nothing.
var Started func(t testing.TB, ms []*Member)

// WaitConnected waits until every member's node is subscribed to its bus.
func WaitConnected(t testing.TB, ms ...*Member) {
	t.Helper()
	Eventually(t, 10*time.Second, "all nodes subscribed", func() bool {
		for _, m := range ms {
			if !m.Node.Connected() {
				return false
			}
		}
		return true
	})
}

// WaitRevocationsKnown waits until every member's node has read the
// farm's revocations: until then a node leaves a peer's broadcast session
// to the store rather than insert it (see farm.Node.RevocationsKnown), and
// a test that expects every node to hold what the others issue must wait
// for it first. Join reads them at once, but a loaded machine (a short
// OpTimeout) may leave the read to the node's next heal.
func WaitRevocationsKnown(t testing.TB, ms ...*Member) {
	t.Helper()
	Eventually(t, 20*time.Second, "all nodes know the farm's revocations", func() bool {
		for _, m := range ms {
			if !m.Node.RevocationsKnown() {
				return false
			}
		}
		return true
	})
}

// WaitFirstHeal waits until each member's node has read the farm's
// revocations twice since it joined (tlsfarm_farm_tombstone_reads_total):
// Join's read and its healer's first heal, which comes after the node's
// first read of the store's generation record. A node finds that the store
// lost its data by that record's change: a test that empties the store
// before the read (a loaded machine may leave it until after the test's
// first steps) tests nothing. The nodes' HealInterval must be short.
// Tests in the farm package, which see the generation itself, need not:
// see Started.
func WaitFirstHeal(t testing.TB, ms ...*Member) {
	t.Helper()
	Eventually(t, 20*time.Second, "every node healed once since it joined (its first read of the store's generation done)", func() bool {
		for _, m := range ms {
			s := m.Node.Metrics()
			if Counter(s, "tlsfarm_farm_tombstone_reads_total", "result", "read")+Counter(s, "tlsfarm_farm_tombstone_reads_total", "result", "unchanged") < 2 {
				return false
			}
		}
		return true
	})
}

// Eventually polls cond until it holds, or fails the test once timeout has
// passed, saying what it waited for.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for: %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Client returns a client configuration for the members' servers: it trusts
// tlstest.SharedCert, names "localhost", pins version (0 for any) and keeps
// its sessions in cache.
func Client(version uint16, cache tls.ClientSessionCache) *tls.Config {
	_, pool := tlstest.SharedCert()
	return tlstest.ClientConfig(pool, "localhost", version, cache)
}

// Roam is a client behind a load balancer that reconnects at once: it
// connects to ms[0], then attempts times to a member picked at random,
// each time with dial. It logs and returns how many of those connections
// did not resume, and how many resumed on another member than the
// previous connection's (which issued the session).
func Roam(t testing.TB, ms []*Member, attempts int, dial func(*Member) tls.ConnectionState) (failed, elsewhere int) {
	t.Helper()
	dial(ms[0])
	issuer := ms[0]
	for range attempts {
		m := ms[rand.N(len(ms))]
		if !dial(m).DidResume {
			failed++
		} else if m != issuer {
			elsewhere++
		}
		issuer = m
	}
	t.Logf("%d/%d resumptions failed; %d resumed on a node that did not issue the ticket", failed, attempts, elsewhere)
	return failed, elsewhere
}

// LogStats logs each member's cache and node statistics, as a test does
// before it fails.
func LogStats(t testing.TB, ms []*Member) {
	t.Helper()
	for _, m := range ms {
		t.Logf("%s: cache %v\nfarm %v", m.Name, m.Cache.Metrics(), m.Node.Metrics())
	}
}

// NoHandshakeErrors fails the test if a handshake failed on any member's
// server.
func NoHandshakeErrors(t testing.TB, ms []*Member) {
	t.Helper()
	for _, m := range ms {
		if errs := m.Server.HandshakeErrors(); len(errs) > 0 {
			t.Fatalf("%s: handshake errors: %v", m.Name, errs)
		}
	}
}

// Counter returns the value of the sample in samples (a Node's or a
// Rotator's Metrics) named name with the given label name, value pairs, as
// a count: 0 if there is none. Tests read counters through it.
func Counter(samples []metric.Sample, name string, labels ...string) uint64 {
	v, _ := metric.Value(samples, name, labels...)
	return uint64(v)
}

// HandshakeSessions records the sessions c issues in handshakes (not those
// it receives from peers); the function it returns reads them, oldest
// first.
func HandshakeSessions(c *session.Cache) func() []session.ID {
	return recordSessions(c, true)
}

// NewSessions records every session c inserts, from handshakes and from
// peers alike; the function it returns reads them, oldest first.
func NewSessions(c *session.Cache) func() []session.ID {
	return recordSessions(c, false)
}

func recordSessions(c *session.Cache, handshakesOnly bool) func() []session.ID {
	var mu sync.Mutex
	var ids []session.ID
	c.AddHook(session.EventNew, func(ev session.Event) {
		if handshakesOnly && ev.Origin != session.OriginHandshake {
			return
		}
		mu.Lock()
		ids = append(ids, ev.ID)
		mu.Unlock()
	})
	return func() []session.ID {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(ids)
	}
}

// Issue has one new TLS 1.3 client per session handshake with m, in order,
// and returns the sessions m issued them and the clients, which hold their
// tickets. It fails the test unless each handshake issued one session.
func Issue(t testing.TB, m *Member, n int) ([]session.ID, []*tlstest.FrozenCache) {
	t.Helper()
	ids := HandshakeSessions(m.Cache)
	cs := make([]*tlstest.FrozenCache, n)
	for i := range cs {
		cs[i] = &tlstest.FrozenCache{}
		tlstest.MustDial(t, m.Server.Addr, Client(tls.VersionTLS13, cs[i]))
	}
	got := ids()
	if len(got) != n {
		t.Fatalf("%s issued %d sessions for %d handshakes", m.Name, len(got), n)
	}
	return got, cs
}
