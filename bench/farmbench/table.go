package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/tlsfarm/tlsfarm/metric"
)

func msOf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
func us(d time.Duration) float64   { return float64(d) / float64(time.Microsecond) }

func pctOf(n, of int) float64 {
	if of == 0 {
		return 0
	}
	return 100 * float64(n) / float64(of)
}

// median returns the median of xs (the mean of the middle two for an even
// count).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// over returns f of each run's measurement of version vi and kind ki.
func (r *result) over(vi, ki int, f func(measurement) float64) []float64 {
	var xs []float64
	for _, run := range r.runs {
		xs = append(xs, f(run[vi][ki]))
	}
	return xs
}

// ratio returns the median over runs of kind ki's hs/s over kind named
// base's, or 0 if base is not in the run.
func (r *result) ratio(vi, ki int, base string) float64 {
	bi := slices.IndexFunc(r.kinds, func(k kind) bool { return k.Name == base })
	if bi < 0 {
		return 0
	}
	var xs []float64
	for _, run := range r.runs {
		if b := run[vi][bi].HSPerSec; b > 0 {
			xs = append(xs, run[vi][ki].HSPerSec/b)
		}
	}
	return median(xs)
}

// Median returns the median of the runs' measurements of the named farm at
// TLS version v, field by field (resumption counts are summed over runs).
func (r *result) Median(v uint16, name string) (measurement, bool) {
	vi := slices.Index(r.versions, v)
	ki := slices.IndexFunc(r.kinds, func(k kind) bool { return k.Name == name })
	if vi < 0 || ki < 0 || len(r.runs) == 0 {
		return measurement{}, false
	}
	d := func(f func(measurement) time.Duration) time.Duration {
		return time.Duration(median(r.over(vi, ki, func(m measurement) float64 { return float64(f(m)) })))
	}
	var m measurement
	m.HSPerSec = median(r.over(vi, ki, func(m measurement) float64 { return m.HSPerSec }))
	for _, run := range r.runs {
		x := run[vi][ki]
		m.Conns += x.Conns
		m.Failed += x.Failed
		m.Offered += x.Offered
		m.Resumed += x.Resumed
		m.SameOffered += x.SameOffered
		m.SameResumed += x.SameResumed
		m.OtherOffered += x.OtherOffered
		m.OtherResumed += x.OtherResumed
		for g, n := range x.Groups {
			if m.Groups == nil {
				m.Groups = map[tls.CurveID]int{}
			}
			m.Groups[g] += n
		}
	}
	m.FullP50 = d(func(m measurement) time.Duration { return m.FullP50 })
	m.FullP99 = d(func(m measurement) time.Duration { return m.FullP99 })
	m.ResumedP50 = d(func(m measurement) time.Duration { return m.ResumedP50 })
	m.ResumedP99 = d(func(m measurement) time.Duration { return m.ResumedP99 })
	m.ServerCPU = d(func(m measurement) time.Duration { return m.ServerCPU })
	m.RedisCPU = d(func(m measurement) time.Duration { return m.RedisCPU })
	m.NATSCPU = d(func(m measurement) time.Duration { return m.NATSCPU })
	return m, true
}

// print writes the table: one row per farm and TLS version.
func (r *result) print(w io.Writer, o options, machine string) {
	fmt.Fprintf(w, "\nfarmbench: 3 nodes per farm on loopback, c=%d, %d reconnects per client at 0 ms, random node per connection, ECDSA P-256;\n", o.clients, o.reconnects)
	fmt.Fprintf(w, "median of %d runs (resumption: all runs pooled); %s\n\n", len(r.runs), machine)
	// The NATS column is there only when a farm of the run broadcasts over
	// NATS, so that the usual table keeps its shape.
	natsCol := false
	for _, run := range r.runs {
		for _, perK := range run {
			for _, m := range perK {
				natsCol = natsCol || m.NATSCPU >= 0
			}
		}
	}
	head, rule := "| farm | TLS | hs/s | × nginx | × Go | resumed | same / other node | full p50 / p99 ms | resumed p50 / p99 ms | server CPU µs/hs | Redis CPU µs/hs |", "|---|---|---|---|---|---|---|---|---|---|---|"
	if natsCol {
		head, rule = head+" NATS CPU µs/hs |", rule+"---|"
	}
	fmt.Fprintln(w, head)
	fmt.Fprintln(w, rule)
	for vi, v := range r.versions {
		for ki, k := range r.kinds {
			m, _ := r.Median(v, k.Name)
			ratio := func(base string) string {
				x := r.ratio(vi, ki, base)
				if x == 0 {
					return "–"
				}
				return fmt.Sprintf("%.2f", x)
			}
			cpuCol := func(d time.Duration) string {
				if d < 0 {
					return "–"
				}
				return fmt.Sprintf("%.0f", us(d))
			}
			brokers := cpuCol(m.RedisCPU)
			if natsCol {
				brokers += " | " + cpuCol(m.NATSCPU)
			}
			failed := ""
			if m.Failed > 0 {
				failed = fmt.Sprintf(" (%d failed)", m.Failed)
			}
			fmt.Fprintf(w, "| %s | %s | %.0f%s | %s | %s | %.2f%% | %.1f%% / %.1f%% | %.2f / %.2f | %.2f / %.2f | %.0f | %s |\n",
				k.Title, strings.TrimPrefix(tls.VersionName(v), "TLS "), m.HSPerSec, failed, ratio("nginx"), ratio("go"),
				pctOf(m.Resumed, m.Offered), pctOf(m.SameResumed, m.SameOffered), pctOf(m.OtherResumed, m.OtherOffered),
				msOf(m.FullP50), msOf(m.FullP99), msOf(m.ResumedP50), msOf(m.ResumedP99), us(m.ServerCPU), brokers)
		}
	}
	r.printGroups(w)
	for _, s := range r.skipped {
		fmt.Fprintf(w, "\nleft out: %s\n", s)
	}
	var notes []string
	for _, k := range r.kinds {
		reps := r.reports[k.Name]
		var lookups, hits, misses, timeouts, errs, skipped, yw, ywArrived, ywStored, ywGaveUp, trips, dropped, failed uint64
		var deadline, canceled, late uint64
		var msgs, sessions, admitted, lagging, gated uint64
		var handshakes, node1 int64 // all nodes', and node 1's (the profiled one)
		var bounds []time.Duration  // the latency histograms' bucket bounds
		var lat, ywLat []uint64
		farmNodes := 0
		for i, rep := range reps {
			failed += uint64(rep.Failed)
			handshakes += rep.Handshakes
			if r.nodes > 0 && i%r.nodes == 0 {
				node1 += rep.Handshakes
			}
			if rep.Farm == nil {
				continue
			}
			farmNodes++
			s := rep.Farm
			v := func(name string, labels ...string) uint64 {
				x, _ := metric.Value(s, name, labels...)
				return uint64(x)
			}
			lookups += v("tlsfarm_farm_lookups_total")
			hits += v("tlsfarm_farm_store_lookups_total", "result", "hit")
			misses += v("tlsfarm_farm_store_lookups_total", "result", "miss")
			timeouts += v("tlsfarm_farm_store_lookups_total", "result", "timeout")
			errs += v("tlsfarm_farm_store_lookups_total", "result", "error")
			skipped += v("tlsfarm_farm_store_lookups_total", "result", "skipped")
			a, st, g := v("tlsfarm_farm_young_waits_total", "result", "arrived"), v("tlsfarm_farm_young_waits_total", "result", "stored"), v("tlsfarm_farm_young_waits_total", "result", "gave_up")
			yw += a + st + g
			ywArrived += a
			ywStored += st
			ywGaveUp += g
			trips += v("tlsfarm_farm_breaker_trips_total")
			dropped += v("tlsfarm_farm_dropped_total")
			deadline += v("tlsfarm_farm_lookups_abandoned_total", "cause", "deadline")
			canceled += v("tlsfarm_farm_lookups_abandoned_total", "cause", "canceled")
			late += v("tlsfarm_farm_lookups_late_total")
			msgs += v("tlsfarm_farm_messages_received_total")
			sessions += v("tlsfarm_farm_received_total", "kind", "session")
			admitted += v("tlsfarm_farm_carried_total", "result", "admitted")
			lagging += v("tlsfarm_farm_carried_total", "result", "lagging")
			for _, res := range []string{"confirmed", "revoked", "store_error", "cut_off"} {
				gated += v("tlsfarm_farm_gated_hits_total", "result", res)
			}
			bounds, lat = addBuckets(s, "tlsfarm_farm_lookup_seconds", bounds, lat)
			bounds, ywLat = addBuckets(s, "tlsfarm_farm_young_wait_seconds", bounds, ywLat)
		}
		if farmNodes == 0 && failed == 0 {
			continue
		}
		note := fmt.Sprintf("%s: server-side failed handshakes %d", k.Name, failed)
		note += fmt.Sprintf("; handshakes served %d (node 1, which -cpuprofile profiles: %d)", handshakes, node1)
		if msgs > 0 {
			note += fmt.Sprintf("; messages received %d, sessions received %d (%.2f a message); carried copies admitted %d, refused for the node's delivery lag %d; hits checked with the store for the node's delivery lag %d",
				msgs, sessions, float64(sessions)/float64(msgs), admitted, lagging, gated)
		}
		if farmNodes > 0 {
			note += fmt.Sprintf("; store lookups %d (found %d, not found %d, timed out %d, errors %d, skipped by the breaker %d); young-session waits %d (arrived %d, stored %d, gave up %d); breaker trips %d; dropped %d",
				lookups, hits, misses, timeouts, errs, skipped, yw, ywArrived, ywStored, ywGaveUp, trips, dropped)
			if ywArrived+ywStored > 0 {
				note += fmt.Sprintf("; young-session wait (those that got it) p50 %s, p99 %s, p99.9 %s, max %s",
					bucketQuantile(ywLat, bounds, 0.5), bucketQuantile(ywLat, bounds, 0.99), bucketQuantile(ywLat, bounds, 0.999), bucketQuantile(ywLat, bounds, 1))
			}
			if lookups > 0 {
				note += fmt.Sprintf("; handshakes that gave up on a lookup: deadline %d, went away %d; late answers %d; answer latency p50 %s, p99 %s, p99.9 %s, max %s",
					deadline, canceled, late, bucketQuantile(lat, bounds, 0.5), bucketQuantile(lat, bounds, 0.99), bucketQuantile(lat, bounds, 0.999), bucketQuantile(lat, bounds, 1))
			}
		}
		notes = append(notes, note)
	}
	if len(notes) > 0 {
		fmt.Fprintln(w, "\nnodes' counters, all runs:")
		for _, n := range notes {
			fmt.Fprintln(w, "  "+n)
		}
	}
}

// printGroups writes which key exchanges the handshakes negotiated, per TLS
// version, naming the farms that share each mix: nginx's OpenSSL may not
// offer what Go prefers, and a key exchange can cost more than the rest of
// a handshake.
func (r *result) printGroups(w io.Writer) {
	fmt.Fprintln(w, "\nkey exchange negotiated (handshakes that made one, all runs):")
	for _, v := range r.versions {
		var order []string
		farms := map[string][]string{}
		for _, k := range r.kinds {
			m, _ := r.Median(v, k.Name)
			mix := groupMix(m.Groups)
			if _, ok := farms[mix]; !ok {
				order = append(order, mix)
			}
			farms[mix] = append(farms[mix], k.Name)
		}
		var parts []string
		for _, mix := range order {
			parts = append(parts, mix+": "+strings.Join(farms[mix], ", "))
		}
		fmt.Fprintf(w, "  %s: %s\n", tls.VersionName(v), strings.Join(parts, "; "))
	}
}

// groupMix describes counts of key exchanges: the names in descending
// order of use, with shares when there is more than one.
func groupMix(groups map[tls.CurveID]int) string {
	if len(groups) == 0 {
		return "none"
	}
	total := 0
	var ids []tls.CurveID
	for g, n := range groups {
		total += n
		ids = append(ids, g)
	}
	slices.SortFunc(ids, func(a, b tls.CurveID) int {
		if groups[a] != groups[b] {
			return groups[b] - groups[a]
		}
		return int(a) - int(b)
	})
	if len(ids) == 1 {
		return ids[0].String()
	}
	var parts []string
	for _, g := range ids {
		parts = append(parts, fmt.Sprintf("%s %.0f%%", g, 100*float64(groups[g])/float64(total)))
	}
	return strings.Join(parts, " + ")
}

// addBuckets adds the per-bucket counts of the histogram sample name in
// samples to counts (one more than the bounds: the last is unbounded), and
// returns the buckets' upper bounds and the counts.
func addBuckets(samples []metric.Sample, name string, bounds []time.Duration, counts []uint64) ([]time.Duration, []uint64) {
	for _, s := range samples {
		if s.Name != name || s.Kind != metric.Histogram {
			continue
		}
		if bounds == nil {
			for _, b := range s.Buckets {
				bounds = append(bounds, time.Duration(b.UpperBound*float64(time.Second)))
			}
		}
		if counts == nil {
			counts = make([]uint64, len(bounds)+1)
		}
		var below uint64 // cumulative count of the buckets before
		for i, b := range s.Buckets {
			if i < len(counts)-1 {
				counts[i] += b.Count - below
			}
			below = b.Count
		}
		counts[len(counts)-1] += s.Count - below
	}
	return bounds, counts
}

// bucketQuantile returns the upper bound (of bounds) of the bucket that
// holds quantile q of the counts, as "≤ d".
func bucketQuantile(counts []uint64, bounds []time.Duration, q float64) string {
	var total uint64
	for _, c := range counts {
		total += c
	}
	if total == 0 {
		return "–"
	}
	rank := uint64(q*float64(total) + 0.999999)
	var seen uint64
	for i, c := range counts {
		seen += c
		if seen >= rank {
			if i < len(bounds) {
				return "≤ " + bounds[i].String()
			}
			return "> " + bounds[len(bounds)-1].String()
		}
	}
	return "?"
}
