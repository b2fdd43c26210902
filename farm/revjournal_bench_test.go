package farm

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// BenchmarkAddRevocation measures what adding a revocation costs a node
// with RevocationFile (on the disk of TMPDIR) and pending revocations
// already (read from the file by Join): the write that RevokeSession
// waits for before it returns. Each iteration adds one more, so that the
// set grows by b.N; run it with a fixed count (-benchtime=200x) to
// compare sizes.
func BenchmarkAddRevocation(b *testing.B) {
	for _, pending := range []int{1, 1000, 10000} {
		b.Run(fmt.Sprintf("pending=%d", pending), func(b *testing.B) {
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
			c := uint64(pending)
			for b.Loop() {
				c++
				n.addRevocation(cache.NewID(), revocation{chain: c, until: t0.Add(time.Hour)})
			}
		})
	}
}
