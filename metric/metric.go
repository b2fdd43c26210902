// Package metric describes the counters, gauges and histograms that
// tlsfarm's packages report about themselves, in one shape that a metrics
// system can export without knowing each of them.
//
// A package that counts things (session.Cache, farm.Node) has a method that
// returns its samples, named and documented the way the admin API exposes
// them in Prometheus' text format. A new counter is a new sample, not a new
// exported field, much as runtime/metrics lists what runtime.MemStats once
// spelled out field by field.
package metric

import (
	"fmt"
	"strings"
)

// A Kind says how a sample's value behaves over time.
type Kind uint8

const (
	// Counter is a value that only grows while the process runs.
	Counter Kind = iota
	// Gauge is a value that goes up and down.
	Gauge
	// Histogram is a distribution of observations: Buckets, Count and the
	// sum in Value.
	Histogram
)

// String returns "counter", "gauge" or "histogram".
func (k Kind) String() string {
	switch k {
	case Counter:
		return "counter"
	case Gauge:
		return "gauge"
	case Histogram:
		return "histogram"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// MarshalText returns k's String form, so that a sample's kind reads as a
// word in JSON.
func (k Kind) MarshalText() ([]byte, error) {
	switch k {
	case Counter, Gauge, Histogram:
		return []byte(k.String()), nil
	}
	return nil, fmt.Errorf("metric: unknown kind %d", uint8(k))
}

// UnmarshalText sets k from its String form.
func (k *Kind) UnmarshalText(b []byte) error {
	for _, c := range []Kind{Counter, Gauge, Histogram} {
		if string(b) == c.String() {
			*k = c
			return nil
		}
	}
	return fmt.Errorf("metric: unknown kind %q", b)
}

// A Label is one dimension of a metric, such as result="hit".
type Label struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// A Bucket is one cumulative histogram bucket: Count observations were at
// most UpperBound.
type Bucket struct {
	UpperBound float64 `json:"upper_bound"`
	Count      uint64  `json:"count"`
}

// A Sample is the value of one metric, with one set of label values, at the
// moment it was read.
type Sample struct {
	// Name is the metric's full name, such as
	// "tlsfarm_cache_lookups_total". Samples of one metric share Name, Help
	// and Kind and differ in their Labels.
	Name string `json:"name"`
	// Help is one sentence on what the metric counts.
	Help string `json:"help"`
	// Kind says whether Value is a counter, a gauge or a histogram's sum.
	Kind Kind `json:"kind"`
	// Labels holds the sample's label values, in the metric's label order.
	Labels []Label `json:"labels,omitempty"`
	// Value is the counter's or gauge's value, or the sum of a histogram's
	// observations (seconds for durations).
	Value float64 `json:"value"`
	// Count is the number of a histogram's observations.
	Count uint64 `json:"count,omitempty"`
	// Buckets holds a histogram's cumulative buckets, in increasing order
	// of UpperBound.
	Buckets []Bucket `json:"buckets,omitempty"`
}

// String formats s as a name, its labels and its value, for logs and test
// failures.
func (s Sample) String() string {
	var b strings.Builder
	b.WriteString(s.Name)
	if len(s.Labels) > 0 {
		b.WriteByte('{')
		for i, l := range s.Labels {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, "%s=%q", l.Name, l.Value)
		}
		b.WriteByte('}')
	}
	fmt.Fprintf(&b, " %g", s.Value)
	return b.String()
}

// Value returns the value of the sample in samples named name whose labels
// are the given name, value pairs (all of them, in any order), and whether
// there is one. It is meant for tests and small tools; an exporter ranges
// over the samples.
func Value(samples []Sample, name string, labels ...string) (float64, bool) {
	if len(labels)%2 != 0 {
		panic("metric: Value needs label names and values in pairs")
	}
	for _, s := range samples {
		if s.Name != name || len(s.Labels) != len(labels)/2 || !hasLabels(s.Labels, labels) {
			continue
		}
		return s.Value, true
	}
	return 0, false
}

// hasLabels reports whether have and the name, value pairs of want are the
// same labels: each pair of want is in have, and each label of have in want
// (a name repeated in want does not stand for another of have's).
func hasLabels(have []Label, want []string) bool {
	in := func(name, value string) bool {
		for i := 0; i < len(want); i += 2 {
			if want[i] == name && want[i+1] == value {
				return true
			}
		}
		return false
	}
	for _, l := range have {
		if !in(l.Name, l.Value) {
			return false
		}
	}
	for i := 0; i < len(want); i += 2 {
		found := false
		for _, l := range have {
			if l.Name == want[i] && l.Value == want[i+1] {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}
