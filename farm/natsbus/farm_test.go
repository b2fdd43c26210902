package natsbus_test

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
)

// natsTransport opens each member's transport on the NATS server at url.
func natsTransport(url string) func(testing.TB, string) (transport.Bus, transport.Store) {
	return func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
		tr := open(t, url, farmName)
		return tr, tr
	}
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
					ms, _ := farmtest.Start(t, 3, &farmtest.Options{NewTransport: natsTransport(srv.url(t)), Mode: mode, WriteThrough: true,
						// Sharing is under test, not the deadlines (their
						// own tests are in farm/edges_test.go): under -race,
						// with other packages' tests on the same two cores,
						// a bucket read or a session's message now and then
						// takes longer than farmtest's 100 ms and 500 ms (a
						// CI run at load 11: 3 lookups past the deadline, 4
						// young waits given up).
						Tweak: func(c *farm.Config) { c.LookupTimeout, c.WriteThroughTimeout = time.Second, time.Second }})
					ccfg := farmtest.Client(tv.v, &tlstest.SharedCache{})
					failed, elsewhere := farmtest.Roam(t, ms, attempts, func(m *farmtest.Member) tls.ConnectionState {
						return tlstest.MustDial(t, m.Server.Addr, ccfg)
					})
					if failed > 2 {
						farmtest.LogStats(t, ms)
						t.Fatalf("%d of %d resumptions failed, want at most 2", failed, attempts)
					}
					if elsewhere < attempts/3 {
						t.Fatalf("only %d of %d resumptions crossed nodes", elsewhere, attempts)
					}
					farmtest.NoHandshakeErrors(t, ms)
					var lookups uint64
					for _, m := range ms {
						lookups += farmtest.Counter(m.Node.Metrics(), "tlsfarm_farm_store_lookups_total", "result", "hit")
					}
					if mode == farm.StoreOnly && lookups == 0 {
						t.Fatal("store-only farm resumed without a single store hit")
					}
				})
			}
		}
	}
}
