package farm

import (
	"encoding/binary"
	"runtime"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// benchIDs returns n distinct session IDs, told apart by the 8 bytes an
// idMemory keeps of each (see idKey), spread as an encrypted body's are.
func benchIDs(n int) []session.ID {
	ids := make([]session.ID, n)
	for i := range ids {
		binary.LittleEndian.PutUint64(ids[i][2:10], uint64(i+1)*0x9e3779b97f4a7c15)
	}
	return ids
}

// BenchmarkEndMemory measures the memory of the IDs resumed lately
// (Node.resumed) holding 65,536 IDs added over MaxAge plus MaxSkew: one
// addEnd (a resumption heard) and one end (the loader's check of a
// record loaded from the store) an op.
func BenchmarkEndMemory(b *testing.B) {
	const live = 1 << 16
	const ttl = 35 * time.Second
	ids := benchIDs(4 * live)
	step := ttl / live
	m := newEndMemory(maxResumed, ttl)
	now := time.Now()
	for i := range live {
		m.addEnd(ids[i], now, now.Add(10*time.Second))
		now = now.Add(step)
	}
	i := live
	for b.Loop() {
		m.addEnd(ids[i%len(ids)], now, now.Add(10*time.Second))
		m.end(ids[(i+live/2)%len(ids)], now)
		now = now.Add(step)
		i++
	}
}

// BenchmarkIDMemoryHeap measures the heap a memory of session IDs takes
// for each ID it holds (B/ID) with 1,000,000 IDs added at once, plain (the
// sessions written, the IDs retired) and with an end (the IDs resumed),
// and one lookup (has) an op.
func BenchmarkIDMemoryHeap(b *testing.B) {
	const n = 1_000_000
	const ttl = 35 * time.Second
	ids := benchIDs(n)
	type memory interface {
		has(session.ID, time.Time) bool
	}
	for _, tc := range []struct {
		name string
		fill func(now time.Time) memory
	}{
		{"plain", func(now time.Time) memory {
			m := newIDMemory(maxRetired, ttl)
			for _, id := range ids {
				m.add(id, now)
			}
			return m
		}},
		{"end", func(now time.Time) memory {
			m := newEndMemory(maxResumed, ttl)
			for _, id := range ids {
				m.addEnd(id, now, now.Add(10*time.Second))
			}
			return m
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			now := time.Now()
			m := tc.fill(now)
			runtime.GC()
			runtime.ReadMemStats(&after)
			perID := float64(after.HeapAlloc-before.HeapAlloc) / n
			i := 0
			for b.Loop() {
				m.has(ids[i%n], now)
				i += 7
			}
			b.ReportMetric(perID, "B/ID")
			runtime.KeepAlive(m)
		})
	}
}
