package farm

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// benchSentNode is a node with what the sent file needs, and a ring of
// size, its clock at *now.
func benchSentNode(b *testing.B, size int) (*Node, *atomic.Int64) {
	b.Helper()
	cache, now, _ := fileTestCache(b, &session.Config{SweepInterval: -1, Lifetime: time.Hour})
	file := filepath.Join(b.TempDir(), "revocations")
	n := &Node{
		cfg: Config{Farm: "bench-sent", Cache: cache, Mode: StoreOnly, RevocationFile: file,
			Now: func() time.Time { return time.Unix(0, now.Load()) }, QueueSize: size},
		keys: testKeyring(b, "bench-sent"), sent: newSentRing(size),
		log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if err := cache.SetIDKeys(n.keys.ids...); err != nil {
		b.Fatal(err)
	}
	n.lf.path, n.lf.sentPath = lifePath(&n.cfg), sentPath(&n.cfg)
	return n, now
}

// writtenBytes returns what this process has written so far (wchar of
// /proc/self/io), or 0.
func writtenBytes() uint64 {
	raw, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "wchar: "); ok {
			n, _ := strconv.ParseUint(v, 10, 64)
			return n
		}
	}
	return 0
}

// BenchmarkSaveSent measures one sync of the sent file (syncSent: what
// lifeSaver does at most once every lifeSaveEvery) under a full ring of
// QueueSize items, after new retirements and cuts were made since the
// last: in stateful mode every resumption makes a cut, so under load the
// ring changes between any two syncs. One op is the new items' pushes and
// the sync (the journal's rewrites into the sent file included, as they
// come); "rewrite" rewrites the whole sent file each time instead
// (saveSent), as every save did before the journal. Besides ns/op it
// reports wB/op, the bytes written (the process's wchar), cpu-µs/op and
// syscalls/op (tlstest.Counters).
func BenchmarkSaveSent(b *testing.B) {
	for _, how := range []string{"journal", "rewrite"} {
		for _, fresh := range []int{1, 100, 1000, defaultQueueSize} {
			b.Run(fmt.Sprintf("%s/ring=%d/new=%d", how, defaultQueueSize, fresh), func(b *testing.B) {
				n, now := benchSentNode(b, defaultQueueSize)
				save := n.syncSent
				if how == "rewrite" {
					save = n.saveSent
				}
				t0 := n.cfg.Now()
				for i := range defaultQueueSize {
					n.sent.push(n.cfg.Cache.NewID(), opCut, t0.Add(time.Minute), t0.Add(time.Hour+time.Duration(i)))
				}
				n.saveSent()
				b.ReportAllocs()
				w0, start := writtenBytes(), tlstest.Snapshot()
				b.ResetTimer()
				for range b.N {
					now.Add(int64(time.Microsecond))
					t := n.cfg.Now()
					for range fresh {
						n.sent.push(n.cfg.Cache.NewID(), opCut, t.Add(time.Minute), t.Add(time.Hour))
					}
					save()
				}
				b.StopTimer()
				start.Report(b)
				b.ReportMetric(float64(writtenBytes()-w0)/float64(b.N), "wB/op")
			})
		}
	}
}

// BenchmarkKeepSentSaving measures keepSent, on the handshake path of every
// resumption in stateful mode (the grace cut) and every retirement, on a
// full ring, from every core at once, with a sent file and the node's
// lifecycle saver running as Join starts them (see BenchmarkKeepSent).
func BenchmarkKeepSentSaving(b *testing.B) {
	n, _ := benchSentNode(b, defaultQueueSize)
	n.lf.dirty, n.lf.sentDirty = make(chan struct{}, 1), make(chan struct{}, 1)
	ids := make([]session.ID, 1024)
	for i := range ids {
		ids[i] = n.cfg.Cache.NewID()
	}
	t0 := n.cfg.Now()
	for i := range defaultQueueSize {
		n.keepSent(item{id: ids[i%len(ids)], op: opCut, until: t0.Add(time.Minute)})
	}
	startSaver(b, n)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			n.keepSent(item{id: ids[i%len(ids)], op: opCut, until: t0.Add(time.Minute)})
			i++
		}
	})
}

// startSaver starts n's lifecycle saver until the benchmark ends.
func startSaver(b *testing.B, n *Node) {
	ctx, cancel := context.WithCancel(context.Background())
	n.wg.Add(1)
	go n.lifeSaver(ctx)
	b.Cleanup(func() { cancel(); n.wg.Wait() })
}
