package probe

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// exactSummary is the Summary of d by sorting, as Run computed it before
// the histogram; it sorts d.
func exactSummary(d []time.Duration) Summary {
	if len(d) == 0 {
		return Summary{}
	}
	slices.Sort(d)
	rank := func(pct int) time.Duration { return d[max((pct*len(d)+99)/100-1, 0)] }
	return Summary{Count: len(d), P50: rank(50), P90: rank(90), P99: rank(99), Max: d[len(d)-1]}
}

// TestHistogramSummary compares the histogram's summary of sets of
// durations with the exact nearest-rank one: Count and Max equal, every
// percentile within HistogramError, and small sets exact.
func TestHistogramSummary(t *testing.T) {
	ms := func(n ...int) []time.Duration {
		d := make([]time.Duration, len(n))
		for i, v := range n {
			d[i] = time.Duration(v) * time.Millisecond
		}
		return d
	}
	seq := func(n int) []time.Duration {
		d := make([]time.Duration, n)
		for i := range d {
			d[i] = time.Duration(n-i) * time.Millisecond
		}
		return d
	}
	rng := rand.New(rand.NewPCG(1, 2))
	random := func(n int, f func() float64) []time.Duration {
		d := make([]time.Duration, n)
		for i := range d {
			d[i] = time.Duration(f())
		}
		return d
	}
	for _, tc := range []struct {
		name  string
		in    []time.Duration
		exact bool // the summary must be exact
	}{
		{"Empty", nil, true},
		{"One", ms(7), true},
		{"Two", ms(9, 1), false},
		{"Ten", seq(10), false},
		{"Hundred", seq(100), false},
		{"Thousand", seq(1000), false},
		{"Nanoseconds", []time.Duration{3, 1, 2, 511, 0}, true},
		{"Negative", []time.Duration{-5, 5}, false},
		{"Huge", []time.Duration{math.MaxInt64, time.Hour, 1}, false},
		// Loopback handshakes: log-normal around 0.3 ms.
		{"LogNormal", random(100000, func() float64 { return 3e5 * math.Exp(rng.NormFloat64()/2) }), false},
		// A fast node and a slow one.
		{"Bimodal", random(20000, func() float64 {
			if rng.IntN(10) == 0 {
				return 40e6 + rng.Float64()*1e6
			}
			return 2e5 + rng.Float64()*5e4
		}), false},
		{"Uniform", random(50000, func() float64 { return rng.Float64() * 10e9 }), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h histogram
			for _, d := range tc.in {
				h.record(d)
			}
			got := h.summary()
			clamped := make([]time.Duration, len(tc.in))
			for i, d := range tc.in {
				clamped[i] = min(max(d, 0), math.MaxInt64-1)
			}
			want := exactSummary(clamped)
			if tc.exact && got != want {
				t.Fatalf("summary %+v, want %+v", got, want)
			}
			if got.Count != want.Count || got.Max != want.Max {
				t.Errorf("count %d, max %v; want %d, %v", got.Count, got.Max, want.Count, want.Max)
			}
			for _, p := range []struct {
				name      string
				got, want time.Duration
			}{{"p50", got.P50, want.P50}, {"p90", got.P90, want.P90}, {"p99", got.P99, want.P99}} {
				if diff := math.Abs(float64(p.got - p.want)); diff > HistogramError*float64(p.want) {
					t.Errorf("%s = %v, want %v within %.2f%% (off by %.3f%%)", p.name, p.got, p.want, 100*HistogramError, 100*diff/float64(p.want))
				}
			}
			if len(tc.in) > 0 && !(got.P50 <= got.P90 && got.P90 <= got.P99 && got.P99 <= got.Max) {
				t.Errorf("percentiles out of order: %+v", got)
			}
			// A histogram merged into an empty one summarizes the same.
			var m histogram
			m.merge(&h)
			if ms := m.summary(); ms != got {
				t.Errorf("merged: %+v, want %+v", ms, got)
			}
		})
	}
}

// TestHistogramIndex checks that the buckets are contiguous and ordered,
// and that each is at most 1/histSub of its values wide.
func TestHistogramIndex(t *testing.T) {
	prev := -1
	for _, v := range []int64{0, 1, 255, 256, 511, 512, 513, 1023, 1024, 1 << 20, 1<<20 + 4095, 1 << 40, math.MaxInt64} {
		i := histIndex(v)
		if i < prev || i >= histSegments*histSub {
			t.Errorf("histIndex(%d) = %d after %d", v, i, prev)
		}
		prev = i
		if m := histMiddle(i); math.Abs(float64(m-v)) > HistogramError*float64(v) {
			t.Errorf("value %d: bucket %d stands for %d", v, i, m)
		}
	}
	for i := range 4 * histSub {
		if histIndex(histMiddle(i)) != i {
			t.Errorf("bucket %d: its middle %d is in bucket %d", i, histMiddle(i), histIndex(histMiddle(i)))
		}
	}
}

// TestLatencyMemoryBounded: counting a connection's latencies takes no
// memory per connection. Before, each kept 16 bytes in slices that grew
// for the whole run (and were copied twice more for the report), so a
// long run at a high rate grew without bound.
func TestLatencyMemoryBounded(t *testing.T) {
	p, err := prepare(Config{Targets: []string{"a:1", "b:1"}, Duration: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	r := &runner{plan: p, lat: make([]latencies, len(p.addrs))}
	w := newWorker(r)
	const n = 1 << 20
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range n {
		w.count(i%2, result{resumed: i%3 != 0, offered: true, connect: time.Duration(200000 + i%100000), handshake: time.Duration(150000 + i%70000)})
	}
	rep := newReport(p, []*worker{w}, r.lat)
	runtime.ReadMemStats(&after)
	if rep.Total.Connections != n || rep.Total.ResumedLatency.Connect.Count+rep.Total.FullLatency.Connect.Count != n {
		t.Fatalf("report of %+v", rep.Total)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
		t.Errorf("%d connections allocated %d bytes (%.1f a connection); want under 1 MB in all", n, grew, float64(grew)/n)
	}
}

// BenchmarkCount measures what the probe does for each connection once it
// is done: count it and its latencies; and the report, once, at the end.
func BenchmarkCount(b *testing.B) {
	p, err := prepare(Config{Targets: []string{"a:1", "b:1", "c:1"}, Duration: time.Hour, Concurrency: 4})
	if err != nil {
		b.Fatal(err)
	}
	r := &runner{plan: p, lat: make([]latencies, len(p.addrs))}
	workers := []*worker{newWorker(r), newWorker(r), newWorker(r), newWorker(r)}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		workers[i%4].count(i%3, result{resumed: i%4 != 0, offered: true, connect: time.Duration(200000 + i%100000), handshake: time.Duration(150000 + i%70000)})
	}
	newReport(p, workers, r.lat)
}

func TestRequestLine(t *testing.T) {
	for _, tc := range []struct {
		in, want string // want "" for an error
	}{
		{"", "GET / HTTP/1.1"},
		{"/", "GET / HTTP/1.1"},
		{"/healthz?x=1", "GET /healthz?x=1 HTTP/1.1"},
		{"GET /", "GET / HTTP/1.1"},
		{"HEAD /x", "HEAD /x HTTP/1.1"},
		{"GET / HTTP/1.0", "GET / HTTP/1.0"},
		{"GET", ""},
		{"GET x", ""},
		{"GET / HTTP/2", ""},
		{"GET / HTTP/1.1 extra", ""},
		{"GET /\r\nX-Evil: 1", ""},
	} {
		got, err := requestLine(tc.in)
		if got != tc.want || (err != nil) != (tc.want == "") {
			t.Errorf("requestLine(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestSplitTarget(t *testing.T) {
	for _, tc := range []struct {
		in, addr, host, port string // addr "" for an error
	}{
		{"127.0.0.1:8443", "127.0.0.1:8443", "127.0.0.1", "8443"},
		{"example.com", "example.com:443", "example.com", "443"},
		{"10.0.0.1", "10.0.0.1:443", "10.0.0.1", "443"},
		{"[::1]:8443", "[::1]:8443", "::1", "8443"},
		{"", "", "", ""},
		{":8443", "", "", ""},
		{"host:", "", "", ""},
		{"::1", "", "", ""},
		{"[::1", "", "", ""},
		{"example.com:https", "example.com:443", "example.com", "443"},
		{"127.0.0.1:0", "", "", ""},
		{"127.0.0.1:65536", "", "", ""},
		{"127.0.0.1:-1", "", "", ""},
		{"127.0.0.1:no-such-service", "", "", ""},
	} {
		addr, host, port, err := splitTarget(tc.in)
		if addr != tc.addr || host != tc.host || port != tc.port || (err != nil) != (tc.addr == "") {
			t.Errorf("splitTarget(%q) = %q, %q, %q, %v; want %q, %q, %q", tc.in, addr, host, port, err, tc.addr, tc.host, tc.port)
		}
	}
}

func TestPrepareDefaults(t *testing.T) {
	p, err := prepare(Config{Targets: []string{"a.example:8443", "b.example"}})
	if err != nil {
		t.Fatal(err)
	}
	c := p.cfg
	if c.ServerName != "a.example" || c.Pick != PickRandom || c.Connections != defaultConnections ||
		c.Concurrency != 1 || c.Timeout != defaultTimeout {
		t.Errorf("defaults: %+v", c)
	}
	want := []string{
		"GET / HTTP/1.1\r\nHost: a.example:8443\r\nConnection: close\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
	}
	for i, r := range p.requests {
		if string(r) != want[i] {
			t.Errorf("request to target %d: %q, want %q", i, r, want[i])
		}
	}
	if !p.read || p.tls.ServerName != "a.example" || p.tls.MinVersion != 0x0303 || p.tls.MaxVersion != 0x0304 {
		t.Errorf("plan: read %v, tls %+v", p.read, p.tls)
	}
	// The Host header brackets an IPv6 address, with or without a port.
	p, err = prepare(Config{Targets: []string{"[::1]:443", "[::1]:8443"}})
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"Host: [::1]\r\n", "Host: [::1]:8443\r\n"} {
		if !strings.Contains(string(p.requests[i]), want) {
			t.Errorf("request %q lacks %q", p.requests[i], want)
		}
	}
	// A duration alone sets no number of connections.
	if p, _ := prepare(Config{Targets: []string{"a:1"}, Duration: time.Second}); p.cfg.Connections != 0 {
		t.Errorf("with a duration, connections = %d", p.cfg.Connections)
	}
}

func TestReportJSONRoundTrip(t *testing.T) {
	lat := Latency{
		Connect:   Summary{3, 1234567 * time.Nanosecond, 2 * time.Millisecond, 3 * time.Millisecond, 4*time.Millisecond + 1},
		Handshake: Summary{3, 500 * time.Microsecond, time.Millisecond, 2 * time.Millisecond, 3 * time.Millisecond},
	}
	target := Stats{Target: "127.0.0.1:8443", Connections: 5, Full: 1, Resumed: 3, Failed: 1,
		Errors: map[string]int{FailTimeout: 1}, Offered: 3, ResumptionRate: 1, CrossNode: 2,
		FullLatency: lat, ResumedLatency: lat}
	total := target
	total.Target = "total"
	in := Report{Targets: []Stats{target}, Total: total, ServerName: "localhost", Pick: PickRandom,
		Concurrency: 4, Version: "TLS 1.3", Elapsed: 1500 * time.Millisecond}

	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out Report
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Errorf("round trip changed the report:\n in %+v\nout %+v\njson %s", in, out, b)
	}
	for _, want := range []string{`"elapsed_ms":1500`, `"p50_ms":1.234567`, `"errors":{"timeout":1}`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("JSON lacks %s: %s", want, b)
		}
	}
	// A pointer marshals the same.
	if b2, _ := json.Marshal(&in); string(b2) != string(b) {
		t.Errorf("pointer marshals as %s", b2)
	}
}
