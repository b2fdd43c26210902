package farm

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// benchRevNode is a node with RevocationFile (on the disk of TMPDIR) and
// pending revocations already (read from the file by Join), for the
// benchmarks of adding more; it returns the node, its cache and its clock.
func benchRevNode(b *testing.B, pending int) (*Node, *session.Cache, time.Time) {
	b.Helper()
	cache, now, t0 := fileTestCache(b, &session.Config{Lifetime: time.Hour})
	file := filepath.Join(b.TempDir(), "revocations")
	n := lifeNode(b, "revbench", file, cache, now, false)
	n.revs.wake = make(chan struct{}, 1)
	var body []byte
	for c := range pending {
		body = appendRevocationFile(body, revocation{chain: uint64(c) + 1, until: t0.Add(time.Hour)}, []session.ID{cache.NewID()})
	}
	hdr := header{typ: valTombstone, time: t0, sender: 1, farm: "revbench"}
	if err := os.WriteFile(file, n.keys.seal(nil, hdr, body, []byte(revocationFileContext)), 0o600); err != nil {
		b.Fatal(err)
	}
	if err := n.loadRevocations(); err != nil || n.pendingRevocations() != pending {
		b.Fatalf("%d pending (%v), want %d", n.pendingRevocations(), err, pending)
	}
	return n, cache, t0
}

// reportSyncs reports the writes (each one fsync or more) to the
// revocations file and its journal per operation, from syncs0 on.
func reportSyncs(b *testing.B, n *Node, syncs0 uint64) {
	n.revs.mu.Lock()
	syncs := n.revs.syncs - syncs0
	n.revs.mu.Unlock()
	b.ReportMetric(float64(syncs)/float64(b.N), "fsyncs/op")
}

// BenchmarkAddRevocation measures what adding a revocation costs a node
// with RevocationFile (on the disk of TMPDIR) and pending revocations
// already (read from the file by Join): the write that RevokeSession
// waits for before it returns. Each iteration adds one more, so that the
// set grows by b.N; run it with a fixed count (-benchtime=200x) to
// compare sizes.
func BenchmarkAddRevocation(b *testing.B) {
	for _, pending := range []int{1, 1000, 10000} {
		b.Run(fmt.Sprintf("pending=%d", pending), func(b *testing.B) {
			n, cache, t0 := benchRevNode(b, pending)
			c := uint64(pending)
			syncs0 := n.revs.syncs
			for b.Loop() {
				c++
				n.addRevocation(cache.NewID(), revocation{chain: c, until: t0.Add(time.Hour)})
			}
			reportSyncs(b, n, syncs0)
		})
	}
}

// BenchmarkAddRevocationParallel is BenchmarkAddRevocation with 64
// goroutines adding revocations at once (many RevokeSession calls during
// a store outage): what each add costs when they can share a write.
func BenchmarkAddRevocationParallel(b *testing.B) {
	for _, pending := range []int{1, 1000} {
		b.Run(fmt.Sprintf("pending=%d", pending), func(b *testing.B) {
			n, cache, t0 := benchRevNode(b, pending)
			var c atomic.Uint64
			c.Store(uint64(pending))
			syncs0 := n.revs.syncs
			b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0)))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					n.addRevocation(cache.NewID(), revocation{chain: c.Add(1), until: t0.Add(time.Hour)})
				}
			})
			b.StopTimer()
			reportSyncs(b, n, syncs0)
		})
	}
}
