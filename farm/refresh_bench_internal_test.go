package farm

import (
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// BenchmarkRefreshBatch measures refreshLater and recutWritten on a store
// batch of 256 new sessions that the cache holds (the common case: none
// cut or retired meanwhile), per session: the work the store path does
// to write each session as the farm knows it when it is written.
func BenchmarkRefreshBatch(b *testing.B) {
	cache, err := session.New(&session.Config{SweepInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer cache.Close()
	n := &Node{cfg: Config{Cache: cache, Mode: Broadcast, Now: time.Now}, sq: newQueue(1024)}
	n.retired = newNegCache(retiredSize, time.Minute)
	n.written = newNegCache(writtenSize, time.Minute)
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
		n.refreshLater(batch)
		n.recutWritten(batch)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(batch)), "ns/session")
}
