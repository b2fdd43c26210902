package farm_test

import (
	"context"
	"encoding/binary"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// BenchmarkStrike measures Node.Strike against the shared Redis: one
// fresh identity a call, the 0-RTT anti-replay decision's cost.
func BenchmarkStrike(b *testing.B) {
	url, farmName := redistest.URL(b), redistest.Farm(b)
	_, node := benchNode(b, url, farmName, farm.NewSecret(1), nil)
	var seq atomic.Uint64
	strike := func() {
		var id [16]byte
		binary.BigEndian.PutUint64(id[:], seq.Add(1))
		if ok, err := node.Strike(context.Background(), id[:], issuedLater, time.Minute); !ok || err != nil {
			b.Fatalf("strike: %v, %v", ok, err)
		}
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			strike()
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				strike()
			}
		})
	})
}
