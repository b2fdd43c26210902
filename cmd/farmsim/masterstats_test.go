package main

import (
	"context"
	"fmt"
	"testing"

	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// TestMasterStatsCountsTheURLsDatabase: with a -redis URL that selects a
// database other than 0, farmsim counts the keys of that database, where
// the farm writes: it read db0's count, so every run reported 0 bytes per
// session.
func TestMasterStatsCountsTheURLsDatabase(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	for _, db := range []int{0, 3} {
		c, err := adminClient(fmt.Sprintf("redis://%s/%d", srv.Addr(), db))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		before, err := masterStats(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 5 {
			if err := c.Set(ctx, fmt.Sprintf("farmsim-test-%d-%d", db, i), "x", 0).Err(); err != nil {
				t.Fatal(err)
			}
		}
		after, err := masterStats(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		if got := after[srv.Addr()][2] - before[srv.Addr()][2]; got != 5 {
			t.Errorf("db %d: %d keys more counted, want 5", db, got)
		}
	}
}
