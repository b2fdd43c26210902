package farm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/natstest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/session"
)

// BenchmarkGatedHit measures the hit gate's read of a session's marks
// and record (checkHit: its chain's and its ID's, none there, and its
// record, whole) on a private Redis, with no replica routing: the read a
// hit makes while the node's delivery lags.
//
//	go test -run '^$' -bench BenchmarkGatedHit ./farm/
func BenchmarkGatedHit(b *testing.B) {
	benchGatedHit(b, benchNode(b, "gatedhit", nil))
}

// BenchmarkGatedHitNATS is BenchmarkGatedHit on the NATS server at
// $TLSFARM_NATS_URL (nats://127.0.0.1:4222 if unset), a farm of its own,
// whose store is not a transport.RecordGetter: the gate's reads go to the
// stream's leader, one key each, all at once.
//
//	go test -run '^$' -bench BenchmarkGatedHitNATS ./farm/
func BenchmarkGatedHitNATS(b *testing.B) {
	url := os.Getenv("TLSFARM_NATS_URL")
	if url == "" {
		url = "nats://127.0.0.1:4222"
	}
	name := "gatedhit-" + rand.Text()[:12]
	tr, err := natsbus.Open(url, name, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		// The shared server keeps no benchmark's buckets.
		natstest.DeleteBuckets(b, tr.Conn(), tr.Bucket(), tr.RecordBucket())
		tr.Close()
	})
	benchGatedHit(b, benchNodeOn(b, name, tr, nil))
}

// benchGatedHit measures n's gated hits on a session whose record is in
// n's store.
func benchGatedHit(b *testing.B, n *Node) {
	var id session.ID
	rand.Read(id[:])
	ctx := context.Background()
	// The session's record is there (see gateRecord), sealed as a node
	// stores it.
	now := time.Now()
	rec := session.Record{State: make([]byte, 200), ServerName: "localhost", Expires: now.Add(time.Hour), Chain: 1, ChainStart: now}
	body, err := rec.AppendBinary(nil)
	if err != nil {
		b.Fatal(err)
	}
	hdr := header{typ: valRecord, time: now, sender: n.instance, farm: n.cfg.Farm}
	item := transport.Item{Key: sessionKey(id), Value: n.keys.seal(nil, hdr, body, id[:]), TTL: time.Hour}
	if err := n.cfg.Records.PutRecords(ctx, item); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if !n.checkHit(ctx, id, 1) {
			b.Fatal("a hit with no mark refused")
		}
	}
}

// benchNode joins a node, named prefix plus a random suffix, to a private
// Redis (bus and store) for a benchmark, with tweak (if not nil) applied
// to its Config; it is closed when b ends (a benchmark, or a test).
func benchNode(b testing.TB, prefix string, tweak func(*Config)) *Node {
	srv := redistest.Start(b)
	var rb [6]byte
	rand.Read(rb[:])
	name := prefix + "-" + hex.EncodeToString(rb[:])
	tr, err := redisbus.Open(srv.URL(), name)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tr.Close() })
	return benchNodeOn(b, name, tr, tweak)
}

// benchTransport is a transport that is the bus and the store.
type benchTransport interface {
	transport.Bus
	transport.Store
}

// benchNodeOn joins a node of the farm name over tr (bus and store), as
// benchNode does.
func benchNodeOn(b testing.TB, name string, tr benchTransport, tweak func(*Config)) *Node {
	cache, err := session.New(&session.Config{Lifetime: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cache.Close() })
	cfg := Config{Farm: name, Cache: cache, Bus: tr, Store: tr,
		Secrets: []Secret{{ID: 1, Bytes: make([]byte, 32)}}, HealInterval: time.Hour,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if tweak != nil {
		tweak(&cfg)
	}
	n, err := Join(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { n.Close() })
	return n
}
