package metric_test

import (
	"fmt"

	"github.com/tlsfarm/tlsfarm/metric"
)

// ExampleValue reads two samples of one metric by their label, as a test
// or a small tool does, to compute a hit ratio.
func ExampleValue() {
	samples := []metric.Sample{
		{Name: "tlsfarm_cache_lookups_total", Kind: metric.Counter, Labels: []metric.Label{{Name: "result", Value: "hit"}}, Value: 41},
		{Name: "tlsfarm_cache_lookups_total", Kind: metric.Counter, Labels: []metric.Label{{Name: "result", Value: "miss"}}, Value: 9},
	}
	hits, _ := metric.Value(samples, "tlsfarm_cache_lookups_total", "result", "hit")
	misses, _ := metric.Value(samples, "tlsfarm_cache_lookups_total", "result", "miss")
	fmt.Printf("hit ratio %.2f\n", hits/(hits+misses))
	// Output: hit ratio 0.82
}
