package natsbus_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// member is one server of a test farm: a TLS server with its own cache,
// farm node and transport.
type member struct {
	name  string
	cache *session.Cache
	node  *farm.Node
	srv   *tlstest.Server
	tr    *natsbus.Transport
}

// join starts a member of farm farmName on the NATS server at url.
func join(t *testing.T, url, name, farmName string, mode farm.Mode, secret farm.Secret) *member {
	t.Helper()
	cache, err := session.New(&session.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cache.Close() })
	tr := open(t, url, farmName)
	node, err := farm.Join(context.Background(), farm.Config{
		Farm:                farmName,
		Node:                name,
		Secrets:             []farm.Secret{secret},
		Cache:               cache,
		Bus:                 tr,
		Store:               tr,
		Mode:                mode,
		WriteThrough:        true,
		LookupTimeout:       100 * time.Millisecond, // survives -race on a busy machine
		WriteThroughTimeout: 500 * time.Millisecond,
		Logger:              slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	cert, _ := tlstest.SharedCert()
	tcfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	cache.Configure(tcfg)
	srv := tlstest.Serve(t, name, tcfg, cache.HandshakeComplete)
	return &member{name: name, cache: cache, node: node, srv: srv, tr: tr}
}

// startFarm starts n members of a fresh farm and waits until all are
// subscribed.
func startFarm(t *testing.T, url string, n int, mode farm.Mode) []*member {
	t.Helper()
	name, secret := farmName(t), farm.NewSecret(1)
	var ms []*member
	for i := range n {
		ms = append(ms, join(t, url, fmt.Sprintf("n%d", i+1), name, mode, secret))
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
		time.Sleep(5 * time.Millisecond)
	}
}

func client(version uint16, cache tls.ClientSessionCache) *tls.Config {
	_, pool := tlstest.SharedCert()
	return tlstest.ClientConfig(pool, "localhost", version, cache)
}

// TestPeerSessionResumesOnOtherNode: a client that a load balancer sends
// to a random node of three each time resumes nearly every time, mostly on
// nodes that did not issue its session, in both modes: broadcast over the
// bus, and store-only through the bucket. On the shared server (2.9, keys
// expire by the value's clock) and on an embedded current one (per-message
// TTL).
func TestPeerSessionResumesOnOtherNode(t *testing.T) {
	attempts := 200
	if testing.Short() {
		attempts = 60
	}
	type server struct {
		name string
		url  func(testing.TB) string
	}
	for _, srv := range []server{{"shared", sharedURL}, {"embedded", embedded}} {
		for _, mode := range []farm.Mode{farm.Broadcast, farm.StoreOnly} {
			for _, tv := range []struct {
				name string
				v    uint16
			}{{"TLS1.2", tls.VersionTLS12}, {"TLS1.3", tls.VersionTLS13}} {
				if srv.name == "embedded" && (mode == farm.Broadcast || tv.v == tls.VersionTLS12) {
					continue // only the store differs: it expires keys itself
				}
				t.Run(srv.name+"/"+mode.String()+"/"+tv.name, func(t *testing.T) {
					ms := startFarm(t, srv.url(t), 3, mode)
					ccfg := client(tv.v, &tlstest.SharedCache{})
					tlstest.MustDial(t, ms[0].srv.Addr, ccfg)
					issuer := ms[0]
					failed, elsewhere := 0, 0
					for range attempts {
						m := ms[rand.N(len(ms))]
						cs := tlstest.MustDial(t, m.srv.Addr, ccfg)
						if !cs.DidResume {
							failed++
						} else if m != issuer {
							elsewhere++
						}
						issuer = m
					}
					t.Logf("%d/%d resumptions failed; %d resumed on a node that did not issue the ticket", failed, attempts, elsewhere)
					if failed > 2 {
						for _, m := range ms {
							t.Logf("%s: cache %+v\nfarm %+v", m.name, m.cache.Stats(), m.node.Stats())
						}
						t.Fatalf("%d of %d resumptions failed, want at most 2", failed, attempts)
					}
					if elsewhere < attempts/3 {
						t.Fatalf("only %d of %d resumptions crossed nodes", elsewhere, attempts)
					}
					var lookups uint64
					for _, m := range ms {
						if errs := m.srv.HandshakeErrors(); len(errs) > 0 {
							t.Fatalf("%s: handshake errors: %v", m.name, errs)
						}
						lookups += m.node.Stats().StoreHits
					}
					if mode == farm.StoreOnly && lookups == 0 {
						t.Fatal("store-only farm resumed without a single store hit")
					}
				})
			}
		}
	}
}
