package farm

import (
	"sync"
	"testing"
	"time"
)

// TestHistogramSnapshotIsConsistent reads a histogram while it is observed,
// as a scrape of /metrics does under load: in every snapshot the count (the
// +Inf bucket of the exposition) is at least each cumulative bucket. A
// snapshot that read the count before the buckets could show a bucket
// larger than +Inf, which Prometheus takes for a broken histogram.
func TestHistogramSnapshotIsConsistent(t *testing.T) {
	h := newHistogram()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			d := time.Duration(w+1) * 50 * time.Microsecond // the first buckets
			for {
				select {
				case <-stop:
					return
				default:
				}
				h.observe(d)
			}
		})
	}
	defer func() {
		close(stop)
		wg.Wait()
	}()
	deadline := time.Now().Add(2 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		var m samples
		m.histogram("x_seconds", "x", &h)
		s := m[0]
		for _, b := range s.Buckets {
			if b.Count > s.Count {
				t.Fatalf("snapshot %d: bucket le=%g holds %d observations, the count is %d", i, b.UpperBound, b.Count, s.Count)
			}
		}
	}
}
