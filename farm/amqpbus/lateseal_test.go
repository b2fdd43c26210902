package amqpbus_test

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// landingStore is a real Redis store whose next record write lands and
// still fails (a write that timed out on a slow server and was carried out
// after), and whose writes then fail while down is set.
type landingStore struct {
	*redisbus.Transport
	landOnce, down atomic.Bool
}

var (
	errLanded = errors.New("write timed out, and landed (test)")
	errDown   = errors.New("store writes down (test)")
)

func (l *landingStore) PutRecords(ctx context.Context, items ...transport.Item) error {
	if l.landOnce.CompareAndSwap(true, false) {
		if err := l.Transport.PutRecords(ctx, items...); err != nil {
			return err
		}
		return errLanded
	}
	if l.down.Load() {
		return errDown
	}
	return l.Transport.PutRecords(ctx, items...)
}

func (l *landingStore) DeleteRecords(ctx context.Context, keys ...string) error {
	if l.down.Load() {
		return errDown
	}
	return l.Transport.DeleteRecords(ctx, keys...)
}

// TestRestrictionSealedLateReachesStore is the order the design left open
// after the writer's memory (Config.MaxAge plus MaxSkew) and old messages
// were covered: a restriction its maker publishes late, sealed when it
// is sent. A RabbitMQ bus (each node's queue kept through an outage, so
// that coming back is no gap, and asks for no re-send) and a Redis store
// apart. n1's write of the single-use session S times out but lands, and
// n1 keeps S to write again; the bus brings S to n2. n2's connection to
// the broker is cut; the client resumes S on n2, whose claim takes S from
// the store (its store path works), and whose retirement of S, which it
// cannot publish, is kept in its lifecycle backlog. n1's store path
// returns: it writes S again, whole (it has heard of no retirement), and
// the retirement mark n2's take left makes that write write nothing.
// n2's bus returns only after n1 has forgotten that write, and n2
// publishes its retirement then: not old by its seal, of a write n1 no
// longer remembers. Once n1 has heard it, S must be gone from the store:
// n3, joining later, must not resume the single-use session a second time.
func TestRestrictionSealedLateReachesStore(t *testing.T) {
	t.Parallel()
	const maxAge, maxSkew = 2 * time.Second, 100 * time.Millisecond
	url, rurl := brokerURL(t), redistest.URL(t)
	name := farmtest.FarmName(t)
	proxy := nettest.NewProxy(t, brokerAddr(url))
	base := farmtest.Options{Mode: farm.Broadcast, Secret: farm.NewSecret(1),
		TweakCache: func(c *session.Config) { c.SingleUse = true },
		Tweak: func(c *farm.Config) {
			c.TallyInterval = -1
			c.MaxAge, c.MaxSkew = maxAge, maxSkew
		}}
	member := func(busURL string) farmtest.Options { return landingMember(base, busURL, rurl) }
	n1 := farmtest.Join(t, "n1", name, member(url))
	first := n1.Store.(*landingStore)
	n2 := farmtest.Join(t, "n2", name, member(viaProxy(t, url, proxy.Addr)))
	farmtest.WaitConnected(t, n1, n2)
	time.Sleep(1200 * time.Millisecond) // past the re-sends asked for at start

	first.landOnce.Store(true)
	first.down.Store(true)
	ids := farmtest.HandshakeSessions(n1.Cache)
	c := &tlstest.FrozenCache{}
	tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, c))
	id := ids()[0]
	key := "s:" + hex.EncodeToString(id[:])
	stored := func() bool {
		_, err := n2.Store.GetRecord(context.Background(), key)
		if err != nil && !errors.Is(err, transport.ErrNotFound) {
			t.Fatal(err)
		}
		return err == nil
	}
	holds := func(m *farmtest.Member) bool { _, ok := expiry(m.Cache, id); return ok }
	farmtest.Eventually(t, 5*time.Second, "S landed, and n2 holds it", func() bool {
		return holds(n2) && stored() && !first.landOnce.Load()
	})

	proxy.Cut()
	restored := false
	defer func() {
		if !restored {
			proxy.Restore()
		}
	}()
	farmtest.Eventually(t, 10*time.Second, "n2's bus is down", func() bool { return !n2.Node.Connected() })
	if !tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
		t.Fatal("S did not resume on n2")
	}
	if stored() {
		t.Fatal("n2's claim did not take S from the store")
	}

	writes := farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_store_writes_total")
	first.down.Store(false)
	farmtest.Eventually(t, 10*time.Second, "n1 wrote S again", func() bool {
		return farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_store_writes_total") > writes
	})
	// n2's take left S's retirement mark: n1's second write, a late
	// write, writes nothing. (Before the take's mark it put S back, and
	// only n2's retirement, published late, deleted it again.)
	if stored() {
		t.Error("n1's second write of S put it back in the store after n2 took it")
	}
	time.Sleep(maxAge + maxSkew + 300*time.Millisecond) // n1 forgot that write
	if !holds(n1) {
		t.Fatal("n1 heard n2's retirement of S while n2's bus was down")
	}
	proxy.Restore()
	restored = true
	farmtest.Eventually(t, 20*time.Second, "n1 heard n2's retirement of S", func() bool { return !holds(n1) })

	time.Sleep(500 * time.Millisecond) // the store paths
	if stored() {
		t.Error("the store keeps the retired single-use session S")
	}
	n3 := farmtest.Join(t, "n3", name, member(url))
	farmtest.WaitConnected(t, n3)
	if tlstest.MustDial(t, n3.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
		t.Error("n3 resumed the single-use session a second time, from n1's second write of it")
	}
}

// TestGraceCutOutlivesBusOutage: in broadcast mode a grace cut reaches
// peers in the child it made, and the store by a cut of its own. A
// RabbitMQ bus and a Redis store apart, as in
// TestRestrictionSealedLateReachesStore: n2's connection to the broker is
// cut, and the client resumes n1's session S on n2. n2 cuts S in the store
// (it is there), but cannot publish the child; once its bus returns (its
// queue kept: no gap, no re-send), n1 must hear of the cut all the same:
// past S's grace, S must resume neither on n1, from its own copy, nor on
// n3, joining later.
func TestGraceCutOutlivesBusOutage(t *testing.T) {
	t.Parallel()
	const grace = 2 * time.Second
	url, rurl := brokerURL(t), redistest.URL(t)
	name := farmtest.FarmName(t)
	proxy := nettest.NewProxy(t, brokerAddr(url))
	base := farmtest.Options{Mode: farm.Broadcast, Secret: farm.NewSecret(1),
		TweakCache: func(c *session.Config) { c.ResumeGrace = grace },
		Tweak:      func(c *farm.Config) { c.TallyInterval = -1 }}
	member := func(busURL string) farmtest.Options { return landingMember(base, busURL, rurl) }
	n1 := farmtest.Join(t, "n1", name, member(url))
	n2 := farmtest.Join(t, "n2", name, member(viaProxy(t, url, proxy.Addr)))
	farmtest.WaitConnected(t, n1, n2)
	time.Sleep(1200 * time.Millisecond) // past the re-sends asked for at start

	ids := farmtest.HandshakeSessions(n1.Cache)
	c := &tlstest.FrozenCache{}
	tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, c))
	id := ids()[0]
	key := "s:" + hex.EncodeToString(id[:])
	farmtest.Eventually(t, 5*time.Second, "S is stored, and n2 holds it", func() bool {
		_, ok := expiry(n2.Cache, id)
		_, err := n2.Store.GetRecord(context.Background(), key)
		return ok && err == nil
	})

	proxy.Cut()
	restored := false
	defer func() {
		if !restored {
			proxy.Restore()
		}
	}()
	farmtest.Eventually(t, 10*time.Second, "n2's bus is down", func() bool { return !n2.Node.Connected() })
	if !tlstest.MustDial(t, n2.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
		t.Fatal("S did not resume on n2")
	}
	cutAt := time.Now()
	time.Sleep(500 * time.Millisecond) // n2's publish fails
	proxy.Restore()
	restored = true
	farmtest.WaitConnected(t, n2)

	time.Sleep(time.Until(cutAt.Add(grace + 500*time.Millisecond)))
	if tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
		t.Error("n1 resumed S past its grace cut: it never heard of the cut")
	}
	n3 := farmtest.Join(t, "n3", name, member(url))
	farmtest.WaitConnected(t, n3)
	if tlstest.MustDial(t, n3.Server.Addr, farmtest.Client(tls.VersionTLS13, c)).DidResume {
		t.Error("n3 resumed S past its grace cut")
	}
}

// landingMember returns base for a member whose bus is the RabbitMQ at
// busURL and whose store is a landingStore over the Redis at storeURL.
func landingMember(base farmtest.Options, busURL, storeURL string) farmtest.Options {
	base.NewTransport = func(tb testing.TB, farmName string) (transport.Bus, transport.Store) {
		bus := open(tb, busURL, farmName, nil)
		tr, err := redisbus.Open(storeURL, farmName)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { tr.Close() })
		return bus, &landingStore{Transport: tr}
	}
	return base
}
