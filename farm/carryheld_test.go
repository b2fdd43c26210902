package farm_test

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
)

// TestCarriedCopyHeldNotInsertedAgain: n2 admits the carried copy of a
// session S that n1 issued (n1's path frozen, so that its message comes
// later). When n1's message of S reaches n2, n2 already holds S as sent:
// with TLS 1.2 (whose resumption keeps S) it does not insert S again
// (counted tlsfarm_farm_received_held_total; before, it cloned and
// inserted it a second time), and S is held as it was, and resumes; with
// TLS 1.3 the resumption cut S on n2, and the copy is refused as before.
func TestCarriedCopyHeldNotInsertedAgain(t *testing.T) {
	t.Parallel()
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(map[uint16]string{tls.VersionTLS12: "tls=1.2", tls.VersionTLS13: "tls=1.3"}[v], func(t *testing.T) {
			const grace = 2 * time.Second
			f := startCarryFarm(t, 2, 1, grace, nil)
			n1, n2 := f.ms[0], f.ms[1]
			_, pool := tlstest.SharedCert()
			c := &tlstest.FrozenCache{}
			dial := func(m *farmtest.Member) bool {
				return tlstest.MustDial(t, m.Server.Addr, tlstest.ClientConfig(pool, "localhost", v, c)).DidResume
			}
			f.px[0].Freeze()
			thawed := false
			t.Cleanup(func() {
				if !thawed {
					f.px[0].Thaw()
				}
			})
			ids := farmtest.HandshakeSessions(n1.Cache)
			if dial(n1) {
				t.Fatal("first handshake resumed")
			}
			s := ids()[0]
			if !dial(n2) {
				t.Fatal("n2 did not resume S from its carried copy")
			}
			if got := carried(n2, "admitted"); got != 1 {
				t.Fatalf("n2 admitted %d carried copies, want 1", got)
			}
			before, ok := lookup(n2.Cache, s)
			if !ok {
				t.Fatal("n2 does not hold S after admitting it")
			}
			m := n2.Node.Metrics()
			inserted := farmtest.Counter(m, "tlsfarm_farm_inserted_total")
			refused := farmtest.Counter(m, "tlsfarm_farm_insert_refused_total")
			f.px[0].Thaw()
			thawed = true
			farmtest.Eventually(t, 10*time.Second, "n1's message of S reached n2", func() bool {
				return farmtest.Counter(n2.Node.Metrics(), "tlsfarm_farm_received_total", "kind", "session") >= 1
			})
			m = n2.Node.Metrics()
			held := farmtest.Counter(m, "tlsfarm_farm_received_held_total")
			inserted = farmtest.Counter(m, "tlsfarm_farm_inserted_total") - inserted
			refused = farmtest.Counter(m, "tlsfarm_farm_insert_refused_total") - refused
			want := [3]uint64{1, 0, 0} // held, inserted, refused
			if v == tls.VersionTLS13 {
				want = [3]uint64{0, 0, 1}
			}
			if got := [3]uint64{held, inserted, refused}; got != want {
				t.Errorf("n2's copy of S from n1's message: held %d, inserted %d, refused %d; want %v", held, inserted, refused, want)
			}
			after, ok := lookup(n2.Cache, s)
			if !ok || !after.Expires.Equal(before.Expires) || after.Chain != before.Chain || string(after.State) != string(before.State) {
				t.Errorf("n2 holds S as %+v (held %v), before the message %+v", after, ok, before)
			}
			if v == tls.VersionTLS12 && !dial(n2) {
				t.Error("S does not resume on n2 after its message came")
			}
		})
	}
}
