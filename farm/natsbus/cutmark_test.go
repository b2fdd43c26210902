package natsbus_test

import (
	"testing"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
)

// TestCutMark: a cut that finds no record leaves a cut mark in the
// record's place, which a late write applies (see farmtest.CheckCutMark),
// on the shared server and on an embedded one with per-message TTL.
func TestCutMark(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		url  func(testing.TB) string
	}{{"shared", sharedURL}, {"embedded", embedded}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			farmtest.CheckCutMark(t, open(t, tc.url(t), farmtest.FarmName(t)))
		})
	}
}
