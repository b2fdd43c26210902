package farm

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// markingBus is silentBus marking its delivery as current (a
// transport.DeliveryMarker), so that a node over it may carry sessions.
type markingBus struct{ silentBus }

func (markingBus) DeliveredThrough() time.Time { return time.Now() }

// BenchmarkResumeEvent measures the node's part of a resumption (the
// cache's event hook for a new session resumed from a parent): the grace
// cut queued for the parent, and with carry on, the check of the parent's
// age (one ID decryption) that decides whether the cut is held for a
// re-send (mayBeCarried). The parents are old, as most are: carry=on
// holds none of them. The queue is drained by the node's publisher onto a
// bus that drops everything.
func BenchmarkResumeEvent(b *testing.B) {
	for _, carry := range []bool{false, true} {
		name := map[bool]string{false: "carry=off", true: "carry=on"}[carry]
		b.Run(name, func(b *testing.B) {
			now := time.Now()
			clock := func() time.Time { return now }
			cache, err := session.New(&session.Config{SweepInterval: -1, ResumeGrace: 10 * time.Second, Now: clock})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { cache.Close() })
			parents := make([]session.ID, 1<<12)
			for i := range parents {
				parents[i] = cache.NewID()
			}
			now = now.Add(time.Minute) // the parents are a minute old
			n, err := Join(context.Background(), Config{Farm: "bench", Secrets: []Secret{NewSecret(1)}, Cache: cache, Bus: markingBus{},
				Mode: Broadcast, Now: clock, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { n.Close() })
			n.cfg.WriteThrough = true // as carry needs; the bus drops what is queued
			if carry {
				n.cfg.CarrySessions = true
				n.rotating.Store(true)
				if !n.carryAllowed() {
					b.Fatal("carry not allowed")
				}
			}
			child := cache.NewID()
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				n.lifecycleEvent(session.Event{Kind: session.EventNew, Origin: session.OriginHandshake, ID: child,
					Record: session.Record{Parent: parents[i%len(parents)]}})
			}
		})
	}
}
