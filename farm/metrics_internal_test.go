package farm

import "github.com/tlsfarm/tlsfarm/metric"

// counter returns the value of the sample named name with the given label
// pairs, as a count (0 if there is none).
func counter(samples []metric.Sample, name string, labels ...string) uint64 {
	v, _ := metric.Value(samples, name, labels...)
	return uint64(v)
}

// rejectedTotal returns the messages rejected for any reason.
func rejectedTotal(samples []metric.Sample) uint64 {
	var t uint64
	for _, s := range samples {
		if s.Name == "tlsfarm_farm_rejected_total" {
			t += uint64(s.Value)
		}
	}
	return t
}
