package natsbus_test

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestBatchesWithinMaxPayload runs a farm on a server whose max_payload
// is 16 KiB: a burst of sessions far larger than that goes out in several
// messages, none above the limit the server announced, and all arrive; a
// session too large for any message is left out and counted, not its
// batch.
func TestBatchesWithinMaxPayload(t *testing.T) {
	const maxPayload = 16 << 10
	conf := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(conf, []byte("max_payload: 16384\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startNATS(t, "-c", conf)
	url := srv.URL("")
	ms, _ := farmtest.Start(t, 2, &farmtest.Options{NewTransport: natsTransport(url)})
	tr := ms[0].Bus.(*natsbus.Transport)
	if got := tr.MaxMessageSize(); got != maxPayload {
		t.Fatalf("MaxMessageSize %d, want the server's max_payload %d", got, maxPayload)
	}

	// Watch the bus as the server sees it.
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var largest, count atomic.Int64
	sub, err := nc.Subscribe(tr.Subject(), func(m *nats.Msg) {
		count.Add(1)
		for {
			l := largest.Load()
			if int64(len(m.Data)) <= l || largest.CompareAndSwap(l, int64(len(m.Data))) {
				break
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	nc.Flush()

	const sessions = 60
	now := time.Now()
	insert := func(state int) {
		st := make([]byte, state)
		rand.Read(st)
		if err := ms[0].Cache.Insert(ms[0].Cache.NewID(), session.Record{State: st, Expires: now.Add(time.Hour)}, session.OriginHandshake); err != nil {
			t.Fatal(err)
		}
	}
	for i := range sessions {
		insert(3 << 10)
		if i == sessions/2 {
			insert(15 << 10) // fits the cache's MaxStateLen, not a message
		}
	}
	farmtest.Eventually(t, 10*time.Second, "every session reached n2", func() bool {
		return farmtest.Counter(ms[1].Node.Metrics(), "tlsfarm_farm_inserted_total") >= sessions
	})
	farmtest.Eventually(t, 5*time.Second, "n1 counted them, the watcher saw them", func() bool {
		return farmtest.Counter(ms[0].Node.Metrics(), "tlsfarm_farm_published_total", "kind", "session") >= sessions && count.Load() >= 2
	})
	nc.Flush()
	st := ms[0].Node.Metrics()
	published := farmtest.Counter(st, "tlsfarm_farm_published_total", "kind", "session")
	unencodable := farmtest.Counter(st, "tlsfarm_farm_unencodable_total")
	publishErrors := farmtest.Counter(st, "tlsfarm_farm_publish_errors_total")
	t.Logf("%d messages on the bus, largest %d bytes; n1: %d published, %d unencodable, %d publish errors",
		count.Load(), largest.Load(), published, unencodable, publishErrors)
	if largest.Load() > maxPayload {
		t.Fatalf("a %d-byte message on a bus whose max_payload is %d", largest.Load(), maxPayload)
	}
	if publishErrors != 0 || unencodable == 0 || published != sessions {
		t.Fatalf("want %d published, the oversize session counted, no errors: %+v", sessions, st)
	}
	if got := farmtest.Counter(ms[1].Node.Metrics(), "tlsfarm_farm_inserted_total"); got != sessions {
		t.Fatalf("n2 inserted %d sessions, want %d", got, sessions)
	}
}
