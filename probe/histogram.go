package probe

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// The latencies of a run are counted in log-linear buckets, as an HDR
// histogram does, rather than kept one by one: a run limited by time
// (-d) at a high rate made memory grow with every connection. A value v
// in nanoseconds below 2*histSub is counted exactly; a larger one in a
// bucket 2^k wide, where v >> k is from histSub to 2*histSub-1. A bucket
// is thus at most 1/histSub of the values it holds wide, and a percentile
// read at its middle is within 1/(2*histSub) of the true one.
const (
	histBits     = 8
	histSub      = 1 << histBits // buckets per power of two
	histSegments = 64 - histBits // segments of histSub buckets for any int64
)

// HistogramError is the most by which a percentile of a [Summary] may
// differ from the exact nearest-rank percentile of the same durations, as
// a fraction of the exact one: 1/512, about 0.2%.
const HistogramError = 1.0 / (2 * histSub)

// A histogram counts durations for percentiles with bounded memory and
// bounded error (see HistogramError). It may be used by many goroutines
// at once; its zero value is empty and ready. Memory is allocated one
// segment (a power of two: 2 KB) at a time, as values arrive in it.
type histogram struct {
	seg   [histSegments]atomic.Pointer[[histSub]atomic.Uint64]
	count atomic.Int64
	low   atomic.Int64 // the least value recorded plus one; 0 if none
	max   atomic.Int64
}

// histIndex returns the bucket of v, which must not be negative.
func histIndex(v int64) int {
	u := uint64(v)
	if u < 2*histSub {
		return int(u)
	}
	shift := bits.Len64(u) - histBits - 1
	return shift*histSub + int(u>>shift)
}

// histMiddle returns the middle of bucket i: the value its counts stand for.
func histMiddle(i int) int64 {
	if i < 2*histSub {
		return int64(i)
	}
	shift := i/histSub - 1
	lo := int64(i-shift*histSub) << shift
	return lo + (int64(1)<<shift-1)/2
}

// record counts d; a negative d counts as zero.
func (h *histogram) record(d time.Duration) {
	v := max(int64(d), 0)
	if v == math.MaxInt64 {
		v-- // so that low can hold v+1
	}
	i := histIndex(v)
	s := h.seg[i/histSub].Load()
	if s == nil {
		s = new([histSub]atomic.Uint64)
		if !h.seg[i/histSub].CompareAndSwap(nil, s) {
			s = h.seg[i/histSub].Load()
		}
	}
	s[i%histSub].Add(1)
	h.count.Add(1)
	for {
		lo := h.low.Load()
		if lo != 0 && lo <= v+1 || h.low.CompareAndSwap(lo, v+1) {
			break
		}
	}
	for {
		m := h.max.Load()
		if m >= v || h.max.CompareAndSwap(m, v) {
			break
		}
	}
}

// merge adds u's counts to h. Neither may be recorded to meanwhile.
func (h *histogram) merge(u *histogram) {
	if u.count.Load() == 0 {
		return
	}
	for i := range u.seg {
		us := u.seg[i].Load()
		if us == nil {
			continue
		}
		s := h.seg[i].Load()
		if s == nil {
			s = new([histSub]atomic.Uint64)
			h.seg[i].Store(s)
		}
		for j := range us {
			s[j].Add(us[j].Load())
		}
	}
	h.count.Add(u.count.Load())
	if lo := h.low.Load(); lo == 0 || u.low.Load() < lo {
		h.low.Store(u.low.Load())
	}
	h.max.Store(max(h.max.Load(), u.max.Load()))
}

// summary returns the Summary of the durations recorded: Count and Max
// exact, the percentiles (nearest rank) within HistogramError.
func (h *histogram) summary() Summary {
	n := h.count.Load()
	if n == 0 {
		return Summary{}
	}
	lo, hi := h.low.Load()-1, h.max.Load()
	// The nearest rank of percentile pct is ceil(pct/100 * n), from 1.
	pcts := [3]int64{50, 90, 99}
	var out [3]time.Duration
	k := 0
	var seen int64
	for i := 0; i < histSegments*histSub && k < len(pcts); i++ {
		s := h.seg[i/histSub].Load()
		if s == nil {
			i += histSub - 1 - i%histSub
			continue
		}
		seen += int64(s[i%histSub].Load())
		for k < len(pcts) && seen >= (pcts[k]*n+99)/100 {
			// The ends are known exactly: a bucket's middle may lie
			// beyond them.
			out[k] = time.Duration(min(max(histMiddle(i), lo), hi))
			k++
		}
	}
	return Summary{Count: int(n), P50: out[0], P90: out[1], P99: out[2], Max: time.Duration(hi)}
}

// latencies holds the histograms of one target's completed connections.
type latencies struct {
	fullConnect, fullHandshake       histogram
	resumedConnect, resumedHandshake histogram
}

// record counts the durations of r, a connection that did not fail.
func (l *latencies) record(r result) {
	if r.resumed {
		l.resumedConnect.record(r.connect)
		l.resumedHandshake.record(r.handshake)
		return
	}
	l.fullConnect.record(r.connect)
	l.fullHandshake.record(r.handshake)
}

// merge adds u's counts to l.
func (l *latencies) merge(u *latencies) {
	l.fullConnect.merge(&u.fullConnect)
	l.fullHandshake.merge(&u.fullHandshake)
	l.resumedConnect.merge(&u.resumedConnect)
	l.resumedHandshake.merge(&u.resumedHandshake)
}

// full and resumed return the Latency of the full and resumed handshakes.
func (l *latencies) full() Latency {
	return Latency{Connect: l.fullConnect.summary(), Handshake: l.fullHandshake.summary()}
}

func (l *latencies) resumed() Latency {
	return Latency{Connect: l.resumedConnect.summary(), Handshake: l.resumedHandshake.summary()}
}
