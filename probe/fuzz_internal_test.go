package probe

import (
	"encoding/json"
	"math"
	"reflect"
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
