package amqpbus_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/amqpbus"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// member is one server of a test farm: a TLS server with its own cache,
// farm node and bus.
type member struct {
	name  string
	cache *session.Cache
	node  *farm.Node
	srv   *tlstest.Server
	bus   *amqpbus.Bus
}

// join starts a member of farm farmName on the broker at url. RabbitMQ
// gives no store: the farm runs in broadcast mode only.
func join(t *testing.T, url, name, farmName string, secret farm.Secret, opts *amqpbus.Options) *member {
	t.Helper()
	cache, err := session.New(&session.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cache.Close() })
	bus := open(t, url, farmName, opts)
	node, err := farm.Join(context.Background(), farm.Config{
		Farm:    farmName,
		Node:    name,
		Secrets: []farm.Secret{secret},
		Cache:   cache,
		Bus:     bus,
		Logger:  slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	cert, _ := tlstest.SharedCert()
	tcfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	cache.Configure(tcfg)
	srv := tlstest.Serve(t, name, tcfg, cache.HandshakeComplete)
	return &member{name: name, cache: cache, node: node, srv: srv, bus: bus}
}

// startFarm starts n members of a fresh farm and waits until all are
// subscribed.
func startFarm(t *testing.T, url string, n int, opts func(i int) *amqpbus.Options) []*member {
	t.Helper()
	name, secret := farmName(t), farm.NewSecret(1)
	var ms []*member
	for i := range n {
		var o *amqpbus.Options
		if opts != nil {
			o = opts(i)
		}
		ms = append(ms, join(t, url, fmt.Sprintf("n%d", i+1), name, secret, o))
	}
	waitConnected(t, ms...)
	return ms
}

func waitConnected(t *testing.T, ms ...*member) {
	t.Helper()
	eventually(t, 10*time.Second, "all nodes subscribed", func() bool {
		for _, m := range ms {
			if !m.node.Stats().Connected {
				return false
			}
		}
		return true
	})
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for: %s", timeout, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func client(version uint16, cache tls.ClientSessionCache) *tls.Config {
	_, pool := tlstest.SharedCert()
	return tlstest.ClientConfig(pool, "localhost", version, cache)
}

// dialAndSpread dials m and waits until every other member has inserted
// the session m issued: without a store, a peer resumes only what it has
// received.
func dialAndSpread(t *testing.T, ms []*member, m *member, ccfg *tls.Config) tls.ConnectionState {
	t.Helper()
	before := make([]uint64, len(ms))
	for i, o := range ms {
		before[i] = o.node.Stats().Inserted
	}
	cs := tlstest.MustDial(t, m.srv.Addr, ccfg)
	for i, o := range ms {
		if o == m {
			continue
		}
		eventually(t, 5*time.Second, o.name+" received "+m.name+"'s session", func() bool {
			return o.node.Stats().Inserted > before[i]
		})
	}
	return cs
}

// TestPeerSessionResumesOnOtherNode: a client that a load balancer sends
// to a random node of three each time resumes every time, mostly on nodes
// that did not issue its session, with sessions spread by the exchange
// alone, once each has arrived.
func TestPeerSessionResumesOnOtherNode(t *testing.T) {
	url := brokerURL(t)
	attempts := 100
	if testing.Short() {
		attempts = 30
	}
	for _, tv := range []struct {
		name string
		v    uint16
	}{{"TLS1.2", tls.VersionTLS12}, {"TLS1.3", tls.VersionTLS13}} {
		t.Run(tv.name, func(t *testing.T) {
			ms := startFarm(t, url, 3, nil)
			ccfg := client(tv.v, &tlstest.SharedCache{})
			dialAndSpread(t, ms, ms[0], ccfg)
			issuer := ms[0]
			failed, elsewhere := 0, 0
			for range attempts {
				m := ms[rand.N(len(ms))]
				cs := dialAndSpread(t, ms, m, ccfg)
				if !cs.DidResume {
					failed++
				} else if m != issuer {
					elsewhere++
				}
				issuer = m
			}
			t.Logf("%d/%d resumptions failed; %d resumed on a node that did not issue the ticket", failed, attempts, elsewhere)
			if failed > 0 {
				for _, m := range ms {
					t.Logf("%s: cache %+v\nfarm %+v", m.name, m.cache.Stats(), m.node.Stats())
				}
				t.Fatalf("%d of %d resumptions failed, want none", failed, attempts)
			}
			if elsewhere < attempts/3 {
				t.Fatalf("only %d of %d resumptions crossed nodes", elsewhere, attempts)
			}
			for _, m := range ms {
				if errs := m.srv.HandshakeErrors(); len(errs) > 0 {
					t.Fatalf("%s: handshake errors: %v", m.name, errs)
				}
			}
		})
	}
}
