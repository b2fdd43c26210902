package natsbus_test

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// The hit gate (farm/hitgate.go) and revocation by ID (farm/revokeid.go)
// over NATS, bus and store (JetStream KV) on one server: the NATS variants
// of farm's TestHeldRevokedWhileDeliveryLags and
// TestRevokeUnknownWhileIssuerCutOff. Each runs on a private nats-server
// process (the machine's binary, before 2.11: keys expire by the value's
// clock) and on an embedded current one (per-message TTL).

// gateServer is a private NATS server for one test, reached at addr.
type gateServer struct {
	name string
	addr func(testing.TB) string
}

var gateServers = []gateServer{
	{"proc", func(tb testing.TB) string { return startNATS(tb).Addr() }},
	{"embedded", func(tb testing.TB) string { return strings.TrimPrefix(embedded(tb), "nats://") }},
}

// openAt opens a transport for farmName on the NATS server at addr,
// closed when the test ends.
func openAt(tb testing.TB, addr, farmName string) *natsbus.Transport {
	tb.Helper()
	tr, err := natsbus.Open("nats://"+addr, farmName, nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { tr.Close() })
	return tr
}

// server returns srv as a farmtest.Server: each member reaches it with
// a transport of its own.
func (srv gateServer) server(t *testing.T) farmtest.Server {
	return farmtest.Server{
		Addr: srv.addr(t),
		Open: func(tb testing.TB, addr, farmName string) (transport.Bus, transport.Store) {
			tr := openAt(tb, addr, farmName)
			return tr, tr
		},
	}
}

// TestNATSHeldRevokedWhileDeliveryLags: TestHeldRevokedWhileDeliveryLags
// (farm/laghits_test.go, farmtest.HeldRevokedWhileDeliveryLags) over NATS,
// with TLS 1.3: n2's bus is a connection of its own through a proxy, its
// store (the same server's KV) another through a second proxy; a stall
// lasts less than the client's ping timeout (the subscription stays up).
// On the embedded server only the cases that gate n2's hits run (only
// the store differs: the mark's expiry). Once the revocation is applied,
// the records' bucket must keep its age limit (recordAgeKept).
func TestNATSHeldRevokedWhileDeliveryLags(t *testing.T) {
	t.Parallel()
	for _, srv := range gateServers {
		t.Run(srv.name, func(t *testing.T) {
			t.Parallel()
			farmtest.HeldRevokedWhileDeliveryLags(t, farmtest.HeldRevokedOptions{
				Version:   tls.VersionTLS13,
				Server:    srv.server,
				GatedOnly: srv.name == "embedded",
				Revoked: func(t *testing.T, n3 *farmtest.Member) {
					recordAgeKept(t, n3.Store.(*natsbus.Transport))
				},
			})
		})
	}
}

// TestNATSGraceCutWhileDeliveryLags: farm's TestGraceCutWhileDeliveryLags
// (farmtest.GraceCutWhileDeliveryLags) over NATS, on both servers: a node
// whose delivery lags within MaxDeliveryLag but past the caches'
// ResumeGrace must not resume a session past a grace cut made elsewhere.
func TestNATSGraceCutWhileDeliveryLags(t *testing.T) {
	t.Parallel()
	for _, srv := range gateServers {
		t.Run(srv.name, func(t *testing.T) {
			t.Parallel()
			farmtest.GraceCutWhileDeliveryLags(t, srv.server)
		})
	}
}

// recordAgeKept fails the test if, on a server before 2.11, the age limit
// of the bucket of session records (its keys expire by the value's clock,
// the bucket drops them at its age limit) was raised past
// natsbus.DefaultLegacyRecordAge: the sessions the farm writes live the
// default Lifetime, so only a revocation's mark can have raised it, and
// then every record would stay in the bucket that long.
func recordAgeKept(t *testing.T, tr *natsbus.Transport) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	native, err := tr.NativeTTL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if native {
		return
	}
	js, err := jetstream.New(tr.Conn())
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, "KV_"+tr.RecordBucket())
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if age := info.Config.MaxAge; age > natsbus.DefaultLegacyRecordAge {
		t.Errorf("the records' bucket keeps every record %v after a revocation, not %v: the revocation's marks raised its age limit",
			age, natsbus.DefaultLegacyRecordAge)
	}
}

// TestNATSRevokeUnknownWhileIssuerCutOff: TestRevokeUnknownWhileIssuerCutOff
// (farm/revunknown_test.go, farmtest.RevokeUnknownWhileIssuerCutOff) over
// NATS, with TLS 1.3: n1 reaches the server (bus and store: one
// connection) through a proxy. Once n1 has written back its other
// session, the records' bucket must keep its age limit (recordAgeKept).
func TestNATSRevokeUnknownWhileIssuerCutOff(t *testing.T) {
	t.Parallel()
	for _, srv := range gateServers {
		t.Run(srv.name, func(t *testing.T) {
			t.Parallel()
			farmtest.RevokeUnknownWhileIssuerCutOff(t, srv.server(t), tls.VersionTLS13, func(t *testing.T, n2 *farmtest.Member) {
				recordAgeKept(t, n2.Store.(*natsbus.Transport))
			})
		})
	}
}
