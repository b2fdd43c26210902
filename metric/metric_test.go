package metric

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func TestValue(t *testing.T) {
	samples := []Sample{
		{Name: "tlsfarm_cache_sessions", Kind: Gauge, Value: 3},
		{Name: "tlsfarm_cache_lookups_total", Kind: Counter, Labels: []Label{{"result", "hit"}}, Value: 5},
		{Name: "tlsfarm_cache_lookups_total", Kind: Counter, Labels: []Label{{"result", "miss"}}, Value: 2},
		{Name: "two", Labels: []Label{{"a", "1"}, {"b", "2"}}, Value: 7},
	}
	tests := []struct {
		name   string
		labels []string
		want   float64
		ok     bool
	}{
		{"tlsfarm_cache_sessions", nil, 3, true},
		{"tlsfarm_cache_lookups_total", []string{"result", "miss"}, 2, true},
		{"tlsfarm_cache_lookups_total", []string{"result", "hit"}, 5, true},
		{"tlsfarm_cache_lookups_total", nil, 0, false},
		{"tlsfarm_cache_lookups_total", []string{"result", "other"}, 0, false},
		{"two", []string{"b", "2", "a", "1"}, 7, true},
		{"two", []string{"a", "1"}, 0, false},
		{"two", []string{"a", "1", "a", "1"}, 0, false}, // b is not asked for
		{"absent", nil, 0, false},
	}
	for _, tt := range tests {
		got, ok := Value(samples, tt.name, tt.labels...)
		if got != tt.want || ok != tt.ok {
			t.Errorf("Value(%s, %v) = %v, %v; want %v, %v", tt.name, tt.labels, got, ok, tt.want, tt.ok)
		}
	}
}

func TestString(t *testing.T) {
	s := Sample{Name: "x_total", Labels: []Label{{"result", "hit"}, {"path", "bus"}}, Value: 1.5}
	if got, want := s.String(), `x_total{result="hit",path="bus"} 1.5`; got != want {
		t.Errorf("String() = %s, want %s", got, want)
	}
	if got := Histogram.String(); got != "histogram" {
		t.Errorf("Histogram.String() = %q", got)
	}
}

func TestSampleJSON(t *testing.T) {
	in := []Sample{
		{Name: "a_total", Help: "h", Kind: Counter, Labels: []Label{{Name: "result", Value: "hit"}}, Value: 3},
		{Name: "b", Kind: Gauge, Value: -1},
		{Name: "c_seconds", Kind: Histogram, Value: 0.5, Count: 2, Buckets: []Bucket{{UpperBound: 0.1, Count: 1}, {UpperBound: 1, Count: 2}}},
	}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"kind":"counter"`, `"kind":"gauge"`, `"kind":"histogram"`, `"labels":[{"name":"result","value":"hit"}]`, `"upper_bound":0.1`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("JSON lacks %s: %s", want, b)
		}
	}
	var out []Sample
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Errorf("round trip:\n got %+v\nwant %+v", out, in)
	}
	if _, err := json.Marshal(Sample{Kind: Kind(9)}); err == nil {
		t.Error("an unknown kind was marshalled")
	}
	if err := json.Unmarshal([]byte(`{"kind":"summary"}`), new(Sample)); err == nil {
		t.Error("an unknown kind was unmarshalled")
	}
}
