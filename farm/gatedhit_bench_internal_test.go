package farm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
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
	n := benchNode(b, "gatedhit", nil)
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
