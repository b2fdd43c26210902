package farm_test

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// heldTombstones is a Redis transport whose reads of the farm's
// revocations wait until release is closed (or their context ends), as a
// store that is slow or hung at a node's start.
type heldTombstones struct {
	*redisbus.Transport
	release <-chan struct{}
}

func (h heldTombstones) SetMembers(ctx context.Context, key string) ([][]byte, error) {
	select {
	case <-h.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return h.Transport.SetMembers(ctx, key)
}

// holdRevocations returns o for a node whose Redis transport holds its
// reads of the farm's revocations until release is closed (see
// heldTombstones), with opTimeout as its OpTimeout if not 0.
func holdRevocations(o farmtest.Options, release <-chan struct{}, opTimeout time.Duration) farmtest.Options {
	o.Tweak = func(cfg *farm.Config) {
		h := heldTombstones{cfg.Store.(*redisbus.Transport), release}
		cfg.Bus, cfg.Store = h, h
		if opTimeout != 0 {
			cfg.OpTimeout = opTimeout
		}
	}
	return o
}

// hookedBus runs before, once, before it subscribes: a bus whose
// subscription takes a while, during which the farm goes on.
type hookedBus struct {
	transport.Bus
	once   *sync.Once
	before func()
}

func (b hookedBus) Subscribe(ctx context.Context, deliver func([]byte), state func(bool, error)) error {
	b.once.Do(b.before)
	return b.Bus.Subscribe(ctx, deliver, state)
}

// revokedFarm starts a one-node farm whose node n1 has issued two sessions
// (a client for each, presenting its first ticket again and again), and
// revokes the first farm-wide. The revoked session's sealed record is then
// written back into the store, as a peer's late write of it (a grace cut
// made just before the revocation) or a replay does: from then on only
// the tombstone keeps a node from resuming it.
func revokedFarm(t *testing.T, o *farmtest.Options) (n1 *farmtest.Member, name string, revoked, kept *tls.Config, revoke func()) {
	t.Helper()
	ms, name := farmtest.Start(t, 1, o)
	n1 = ms[0]
	ids := farmtest.NewSessions(n1.Cache)
	revoked = farmtest.Client(tls.VersionTLS13, &tlstest.FrozenCache{})
	kept = farmtest.Client(tls.VersionTLS13, &tlstest.FrozenCache{})
	tlstest.MustDial(t, n1.Server.Addr, revoked)
	tlstest.MustDial(t, n1.Server.Addr, kept)
	if len(ids()) != 2 {
		t.Fatalf("%d sessions issued, want 2", len(ids()))
	}
	id := ids()[0]
	key := "s:" + hex.EncodeToString(id[:])
	var raw []byte
	farmtest.Eventually(t, 5*time.Second, "both sessions in the store", func() bool {
		var err error
		raw, err = n1.Store.GetRecord(context.Background(), key)
		_, err2 := n1.Store.GetRecord(context.Background(), "s:"+hex.EncodeToString(ids()[1][:]))
		return err == nil && err2 == nil
	})
	revoke = func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if st, err := n1.Node.RevokeSession(ctx, id); err != nil || st != farm.RevokeApplied {
			t.Errorf("RevokeSession = %v, %v; want applied", st, err)
			return
		}
		if err := n1.Store.PutRecords(ctx, transport.Item{Key: key, Value: raw, TTL: time.Minute}); err != nil {
			t.Error(err)
		}
	}
	return n1, name, revoked, kept, revoke
}

// TestJoinReadsRevocationsBeforeReturning: a node that joins a farm refuses
// a session the farm revoked before from the moment Join returns, though
// the store still holds the session's record and its read of the farm's
// revocations is slow (1s, within OpTimeout): Join waits for that read.
func TestJoinReadsRevocationsBeforeReturning(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	o := farmtest.Options{NewTransport: redisTransport(url)}
	_, name, revoked, kept, revoke := revokedFarm(t, &o)
	revoke()
	release := make(chan struct{})
	time.AfterFunc(time.Second, func() { close(release) })
	late := holdRevocations(o, release, 0)
	start := time.Now()
	m := farmtest.Join(t, "late", name, late)
	if tlstest.MustDial(t, m.Server.Addr, revoked).DidResume {
		t.Fatalf("a session revoked farm-wide resumed on a node that joined %v ago", time.Since(start))
	}
	if !m.Node.RevocationsKnown() {
		t.Fatal("Join returned without the farm's revocations, its store answering within OpTimeout")
	}
	if !tlstest.MustDial(t, m.Server.Addr, kept).DidResume {
		t.Fatal("a session not revoked did not resume from the store")
	}
}

// TestJoinWithRevocationsUnreadable: a node whose read of the farm's
// revocations does not end within OpTimeout at Join starts anyway, but
// resumes no session from the farm — revoked or not: full handshakes,
// counted — until the read succeeds; then it resumes every session but the
// revoked one.
func TestJoinWithRevocationsUnreadable(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	o := farmtest.Options{NewTransport: redisTransport(url)}
	_, name, revoked, kept, revoke := revokedFarm(t, &o)
	revoke()
	release := make(chan struct{})
	late := holdRevocations(o, release, 300*time.Millisecond)
	start := time.Now()
	m := farmtest.Join(t, "late", name, late)
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("Join took %v with OpTimeout 300ms", took)
	}
	if m.Node.RevocationsKnown() {
		t.Fatal("revocations known, though never read")
	}
	for _, c := range []*tls.Config{revoked, kept} {
		if tlstest.MustDial(t, m.Server.Addr, c).DidResume {
			t.Fatal("a session from the farm resumed before the node read the farm's revocations")
		}
	}
	if n := farmtest.Counter(m.Node.Metrics(), "tlsfarm_farm_unknown_revocations_refused_total"); n != 2 {
		t.Fatalf("refused for unknown revocations: %d, want 2", n)
	}
	close(release)
	farmtest.Eventually(t, 5*time.Second, "the revocations read", m.Node.RevocationsKnown)
	// The kept session first: each dial looks it up in the store within
	// LookupTimeout (250ms), which a CI run at load 11 overran once. Once
	// it resumes, lookups answer in time, and the revoked session's
	// refusal is the tombstone's doing, not a slow store's.
	farmtest.Eventually(t, 5*time.Second, "a session not revoked resumed once the revocations were read", func() bool {
		return tlstest.MustDial(t, m.Server.Addr, kept).DidResume
	})
	if n := farmtest.Counter(m.Node.Metrics(), "tlsfarm_farm_lookups_abandoned_total", "cause", "deadline"); n > 0 {
		t.Logf("%d lookups overran their deadline", n)
	}
	for range 3 {
		if tlstest.MustDial(t, m.Server.Addr, revoked).DidResume {
			t.Fatal("a session revoked farm-wide resumed once the revocations were read")
		}
	}
}

// notedReads is a Redis transport that closes read after its first read of
// the farm's revocations.
type notedReads struct {
	*redisbus.Transport
	read chan struct{}
	once *sync.Once
}

func (r notedReads) SetMembers(ctx context.Context, key string) ([][]byte, error) {
	m, err := r.Transport.SetMembers(ctx, key)
	if err == nil {
		r.once.Do(func() { close(r.read) })
	}
	return m, err
}

// TestJoinHearsRevocationWhileSubscribing: a revocation made while a
// joining node's subscription is still being set up (too late for the bus
// to bring it, as the node was not subscribed) is refused from the moment
// Join returns: the node reads the revocation list only once it is
// subscribed. (A node that read the list first, then subscribed, would
// miss it until its next read.)
func TestJoinHearsRevocationWhileSubscribing(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	o := farmtest.Options{NewTransport: redisTransport(url)}
	_, name, revoked, kept, revoke := revokedFarm(t, &o)
	revokedDone := make(chan struct{})
	late := o
	late.Tweak = func(cfg *farm.Config) {
		r := notedReads{cfg.Store.(*redisbus.Transport), make(chan struct{}), new(sync.Once)}
		cfg.Store = r
		cfg.Bus = hookedBus{cfg.Bus, new(sync.Once), func() {
			// After the node's first read of the list, if it makes
			// one before it subscribes.
			select {
			case <-r.read:
			case <-time.After(200 * time.Millisecond):
			}
			revoke()
			close(revokedDone)
			time.Sleep(300 * time.Millisecond) // the subscription is slow to come
		}}
	}
	m := farmtest.Join(t, "late", name, late)
	<-revokedDone
	if tlstest.MustDial(t, m.Server.Addr, revoked).DidResume {
		t.Fatal("a session revoked as the node subscribed resumed after Join returned")
	}
	if !tlstest.MustDial(t, m.Server.Addr, kept).DidResume {
		t.Fatal("a session not revoked did not resume from the store")
	}
}

// TestJoinWithRevocationsUnreadableTakesNoFarmKeys: stateless tickets under
// the farm's keys resume without a store lookup, so a node that could not
// read the farm's revocations at Join must not hold the farm's keys: a
// farm ticket makes a full handshake there until the read succeeds, then
// resumes.
func TestJoinWithRevocationsUnreadableTakesNoFarmKeys(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	o := farmtest.Options{NewTransport: redisTransport(url), SessionMode: session.Stateless,
		Rotation: &farm.RotationConfig{Interval: time.Hour, PollInterval: 100 * time.Millisecond}}
	ms, name := farmtest.Start(t, 1, &o)
	client := farmtest.Client(tls.VersionTLS13, &tlstest.FrozenCache{})
	tlstest.MustDial(t, ms[0].Server.Addr, client)
	release := make(chan struct{})
	late := holdRevocations(o, release, 300*time.Millisecond)
	// The late node's rotator waits on the held read, so Join's wait
	// for the farm's keys runs out whatever its length: not 5 s of it.
	late.ReadyWait = 500 * time.Millisecond
	m := farmtest.Join(t, "late", name, late)
	time.Sleep(300 * time.Millisecond) // a few of the rotator's polls
	if tlstest.MustDial(t, m.Server.Addr, client).DidResume {
		t.Fatal("a farm ticket resumed on a node that had yet to read the farm's revocations")
	}
	close(release)
	farmtest.Eventually(t, 5*time.Second, "the farm ticket resuming once the revocations are read", func() bool {
		return tlstest.MustDial(t, m.Server.Addr, client).DidResume
	})
}

// TestJoinWithRevocationsUnreadableInsertsNoPeerSession: a session a peer
// sends while the node has yet to read the farm's revocations is not
// inserted (it might be of a chain revoked as it was sent); once the
// revocations are read, the store provides it.
func TestJoinWithRevocationsUnreadableInsertsNoPeerSession(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	o := farmtest.Options{NewTransport: redisTransport(url)}
	ms, name := farmtest.Start(t, 1, &o)
	release := make(chan struct{})
	late := holdRevocations(o, release, 300*time.Millisecond)
	m := farmtest.Join(t, "late", name, late)
	farmtest.WaitConnected(t, m)
	client := farmtest.Client(tls.VersionTLS13, &tlstest.FrozenCache{})
	tlstest.MustDial(t, ms[0].Server.Addr, client)
	farmtest.Eventually(t, 5*time.Second, "the session sent to the late node", func() bool {
		return farmtest.Counter(m.Node.Metrics(), "tlsfarm_farm_received_total", "kind", "session") == 1
	})
	if tlstest.MustDial(t, m.Server.Addr, client).DidResume {
		t.Fatal("a peer's session resumed on a node that had yet to read the farm's revocations")
	}
	close(release)
	farmtest.Eventually(t, 5*time.Second, "the revocations read", m.Node.RevocationsKnown)
	if !tlstest.MustDial(t, m.Server.Addr, client).DidResume {
		t.Fatal("the peer's session did not resume from the store once the revocations were read")
	}
}

// heldTombstoneWrites is a Redis transport whose writes of tombstones wait
// until release is closed (a revocation whose store write is slow), and
// which closes published after its first publish of a revocation.
type heldTombstoneWrites struct {
	*redisbus.Transport
	release   <-chan struct{}
	published chan struct{}
	once      *sync.Once
}

func (h heldTombstoneWrites) SetAdd(ctx context.Context, key string, member []byte, until time.Time) error {
	select {
	case <-h.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	return h.Transport.SetAdd(ctx, key, member, until)
}

func (h heldTombstoneWrites) Publish(ctx context.Context, msgs ...[]byte) error {
	err := h.Transport.Publish(ctx, msgs...)
	select {
	case <-h.release:
	default:
		// Only revocations are published while the tombstone is held:
		// the farm's sessions go by PutAndPublish.
		if err == nil {
			h.once.Do(func() { close(h.published) })
		}
	}
	return err
}

// TestJoinBetweenRevocationPublishAndStore: a node that joins after a
// revocation was published (too late to hear it) but before its tombstone
// was stored (too early to read it) still learns it: the revoker publishes
// it again once it is stored.
func TestJoinBetweenRevocationPublishAndStore(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	release, published := make(chan struct{}), make(chan struct{})
	o := farmtest.Options{NewTransport: redisTransport(url), Tweak: func(cfg *farm.Config) {
		h := heldTombstoneWrites{cfg.Store.(*redisbus.Transport), release, published, new(sync.Once)}
		cfg.Bus, cfg.Store = h, h
		// The tombstone is held while the late node joins, which takes
		// as long as its first read of the revocations (up to its own
		// OpTimeout, 2 s, when that read is slow): n1's write of it
		// must outlast that, or it fails at n1's deadline and the test
		// is of a retried write, not of one that was late.
		cfg.OpTimeout = 15 * time.Second
	}}
	n1, name, revoked, kept, revoke := revokedFarm(t, &o)
	revokedDone := make(chan struct{})
	go func() {
		defer close(revokedDone)
		revoke()
	}()
	select {
	case <-published:
	case <-time.After(5 * time.Second):
		t.Fatal("the revocation was not published")
	}
	late := o
	late.Tweak = nil
	m := farmtest.Join(t, "late", name, late)
	close(release)
	<-revokedDone // applied: stored, and published again
	if n := farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_store_write_errors_total"); n != 0 {
		t.Fatalf("%d store write errors: the tombstone was held too long", n)
	}
	farmtest.Eventually(t, 5*time.Second, "the revocation heard again", func() bool {
		return farmtest.Counter(m.Node.Metrics(), "tlsfarm_farm_received_total", "kind", "revocation") >= 1
	})
	if tlstest.MustDial(t, m.Server.Addr, revoked).DidResume {
		t.Fatal("a revoked session resumed on a node that joined between the revocation's publish and its store write")
	}
	if !tlstest.MustDial(t, m.Server.Addr, kept).DidResume {
		t.Fatal("a session not revoked did not resume from the store")
	}
}
