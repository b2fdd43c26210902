package probe

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
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
			d[i] = time.Duration(n-i) * time.Millisecond // descending: summarize sorts
		}
		return d
	}
	for _, tc := range []struct {
		name string
		in   []time.Duration
		want Summary
	}{
		{"Empty", nil, Summary{}},
		{"One", ms(7), Summary{1, 7 * time.Millisecond, 7 * time.Millisecond, 7 * time.Millisecond, 7 * time.Millisecond}},
		{"Two", ms(9, 1), Summary{2, time.Millisecond, 9 * time.Millisecond, 9 * time.Millisecond, 9 * time.Millisecond}},
		{"Ten", seq(10), Summary{10, 5 * time.Millisecond, 9 * time.Millisecond, 10 * time.Millisecond, 10 * time.Millisecond}},
		{"Hundred", seq(100), Summary{100, 50 * time.Millisecond, 90 * time.Millisecond, 99 * time.Millisecond, 100 * time.Millisecond}},
		{"Thousand", seq(1000), Summary{1000, 500 * time.Millisecond, 900 * time.Millisecond, 990 * time.Millisecond, 1000 * time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := summarize(tc.in); got != tc.want {
				t.Errorf("summarize = %+v, want %+v", got, tc.want)
			}
		})
	}
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
