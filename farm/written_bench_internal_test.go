package farm

import (
	"runtime"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// BenchmarkWrittenMemory measures a node's memory of its writes (see
// recutLate) holding 65,536 sessions written over MaxAge plus MaxSkew:
// one add (a session written) and one since (a peer's restriction heard)
// an op, and the heap each remembered session takes. "ring" is the
// bounded set of IDs it used to be (negCache, 65,536 IDs), "generations"
// the idMemory that replaced it.
func BenchmarkWrittenMemory(b *testing.B) {
	const live = 1 << 16
	const ttl = 35 * time.Second
	cache, err := session.New(&session.Config{SweepInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer cache.Close()
	ids := make([]session.ID, 4*live)
	for i := range ids {
		ids[i] = cache.NewID()
	}
	step := ttl / live
	type memory interface {
		add(session.ID, time.Time)
		since(session.ID, time.Time) (time.Time, bool)
	}
	for _, tc := range []struct {
		name string
		make func() memory
	}{
		{"ring", func() memory { return newNegCache(1<<16, ttl) }},
		{"generations", func() memory { return newIDMemory(maxWritten, ttl) }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			m := tc.make()
			now := time.Now()
			for i := range live {
				m.add(ids[i], now)
				now = now.Add(step)
			}
			runtime.GC()
			runtime.ReadMemStats(&after)
			perSession := float64(after.HeapAlloc-before.HeapAlloc) / live
			i := live
			b.ResetTimer()
			for b.Loop() {
				m.add(ids[i%len(ids)], now)
				m.since(ids[(i+live/2)%len(ids)], now)
				now = now.Add(step)
				i++
			}
			b.ReportMetric(perSession, "B/session")
			runtime.KeepAlive(m)
		})
	}
}
