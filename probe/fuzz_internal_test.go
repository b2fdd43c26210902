package probe

import (
	"encoding/json"
	"math"
	"net"
	"reflect"
	"strconv"
	"testing"
)

// FuzzReportJSON checks that a Report read from any JSON (a saved report,
// say) writes back as JSON that reads as the same Report.
func FuzzReportJSON(f *testing.F) {
	f.Add(`{"targets":[{"target":"a:1","connections":2,"full_latency":{"connect":{"count":1,"p50_ms":1.5}}}],"total":{"target":"total"},"elapsed_ms":1500}`)
	f.Add(`{"elapsed_ms":1e300,"total":{"resumed_latency":{"handshake":{"max_ms":-1e30}}}}`)
	f.Add(`{"elapsed_ms":0.0000001}`)
	f.Add(`null`)
	f.Fuzz(func(t *testing.T, s string) {
		var r Report
		if err := json.Unmarshal([]byte(s), &r); err != nil {
			return
		}
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		var r2 Report
		if err := json.Unmarshal(b, &r2); err != nil {
			t.Fatalf("%s reads back as %s, which does not read: %v", s, b, err)
		}
		if !reflect.DeepEqual(r, r2) {
			t.Fatalf("%s reads as\n%+v\nwrites as %s, which reads as\n%+v", s, r, b, r2)
		}
	})
}

// FuzzThresholds checks that the -min-resumption and -max-failures flags
// never panic, and that what they print of a value they took sets the same
// value again.
func FuzzThresholds(f *testing.F) {
	for _, s := range []string{"0.99", "99%", "3", "1%", "0", "100%", "1e-3", "Inf", "-0", "NaN%", "0x1p-2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var fr fraction
		if fr.Set(s) == nil {
			if math.IsNaN(fr.v) || fr.v < 0 || fr.v > 1 {
				t.Fatalf("-min-resumption %q took %v", s, fr.v)
			}
			if f, _ := fr.r.Float64(); !near(f, fr.v) && math.Abs(f-fr.v) > 1e-300 {
				t.Fatalf("-min-resumption %q compares with %v, not %v", s, fr.r, fr.v)
			}
			var again fraction
			if err := again.Set(fr.String()); err != nil || !near(again.v, fr.v) {
				t.Fatalf("-min-resumption %q prints as %q, which sets %v (%v), not %v", s, fr.String(), again.v, err, fr.v)
			}
		}
		var l failureLimit
		if l.Set(s) == nil {
			var again failureLimit
			if err := again.Set(l.String()); err != nil || again.pct != l.pct || again.count != l.count || !near(again.share, l.share) {
				t.Fatalf("-max-failures %q prints as %q, which sets %+v (%v), not %+v", s, l.String(), again, err, l)
			}
		}
	})
}

func near(a, b float64) bool {
	return a == b || math.Abs(a-b) <= 1e-12*math.Max(math.Abs(a), math.Abs(b))
}

// FuzzSplitTarget checks splitTarget (a probe target from -target or the
// probe's configuration) on arbitrary input: no panic, and a target it
// accepts gives a dialable address that splits back into its host and its
// port, a port number from 1 to 65535, and the same again when the
// address is given as the target.
func FuzzSplitTarget(f *testing.F) {
	for _, s := range []string{"a.example:8443", "a.example", "192.0.2.1", "[2001:db8::1]:https", "[::1]", "h:0", "h:65536", ":443", "h:"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, target string) {
		addr, host, port, err := splitTarget(target)
		if err != nil {
			return
		}
		h, p, err := net.SplitHostPort(addr)
		if err != nil || h != host || p != port {
			t.Fatalf("splitTarget(%q) gave address %q, which splits into %q, %q (%v), not %q, %q", target, addr, h, p, err, host, port)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != port {
			t.Fatalf("splitTarget(%q) gave port %q", target, port)
		}
		addr2, host2, port2, err := splitTarget(addr)
		if err != nil || addr2 != addr || host2 != host || port2 != port {
			t.Fatalf("splitTarget(%q) gave %q, whose split is %q, %q, %q (%v)", target, addr, addr2, host2, port2, err)
		}
	})
}
