package farm_test

import (
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
)

// The members farmtest.Start returns have read the store's generation
// record: see farmtest.Started.
func init() {
	farmtest.Started = func(t testing.TB, ms []*farmtest.Member) {
		t.Helper()
		farmtest.Eventually(t, 10*time.Second, "every node read the store's generation", func() bool {
			for _, m := range ms {
				if m.Node.ReadsGeneration() && m.Node.StoreGeneration() == nil {
					return false
				}
			}
			return true
		})
	}
}
