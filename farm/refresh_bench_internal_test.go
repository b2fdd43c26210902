package farm

import (
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// BenchmarkRefreshBatch measures refreshLater and recutWritten on a store
// batch of 256 new sessions that the cache holds (the common case: none
// cut or retired meanwhile), per session: the work the store path does
// to write each session as the farm knows it when it is written (nothing
// is cut meanwhile, so recutWritten need not read them again). On a
// store path of its own ("store-path"), on a combined path (bus and store
// one transport) that writes before it publishes ("combined": one Redis),
// and on one that may publish first ("combined-cluster": a Redis Cluster,
// see transport.UnorderedBatcher), which remembers every new session as
// the store path does.
func BenchmarkRefreshBatch(b *testing.B) {
	b.Run("store-path", func(b *testing.B) { benchRefreshBatch(b, newQueue(1024), true) })
	b.Run("combined", func(b *testing.B) { benchRefreshBatch(b, nil, false) })
	b.Run("combined-cluster", func(b *testing.B) { benchRefreshBatch(b, nil, true) })
}

func benchRefreshBatch(b *testing.B, sq *queue, first bool) {
	cache, err := session.New(&session.Config{SweepInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer cache.Close()
	n := &Node{cfg: Config{Cache: cache, Mode: Broadcast, Now: time.Now}, sq: sq}
	n.retired = newIDMemory(maxRetired, time.Minute)
	n.written = newWritten(time.Minute)
	rec := session.Record{State: make([]byte, 200), ServerName: "localhost", Expires: time.Now().Add(time.Hour)}
	batch := make([]item, 256)
	for i := range batch {
		id := cache.NewID()
		if err := cache.Insert(id, rec, session.OriginPeer); err != nil {
			b.Fatal(err)
		}
		batch[i] = item{id: id, rec: rec}
	}
	b.ResetTimer()
	for b.Loop() {
		read := n.readMark()
		n.refreshLater(batch)
		n.recutWritten(batch, first, read)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(batch)), "ns/session")
}
