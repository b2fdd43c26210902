package farm

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// TestIDMemoryOverflowMetric: once a node's memory of resumed IDs goes
// past its bound (maxResumed, 2^20 IDs) it answers "maybe" for every ID
// it does not hold — here a peer's copy of any session would be refused
// — and tlsfarm_farm_id_memory_overflowed{memory="resumed"} shows it,
// until the forgotten IDs would have lapsed (MaxAge plus MaxSkew); the
// overflow is counted. The other memories show nothing.
func TestIDMemoryOverflowMetric(t *testing.T) {
	var clock atomic.Int64
	start := time.Now()
	clock.Store(start.UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	cache, err := session.New(&session.Config{SweepInterval: -1, Lifetime: time.Hour, ResumeGrace: 10 * time.Second, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cache.Close() })
	n, err := Join(context.Background(), Config{Farm: "idmemmetric", Secrets: []Secret{NewSecret(1)}, Cache: cache, Bus: silentBus{},
		Now: now, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	gauge := func(memory string) uint64 {
		return counter(n.Metrics(), "tlsfarm_farm_id_memory_overflowed", "memory", memory)
	}
	overflows := func(memory string) uint64 {
		return counter(n.Metrics(), "tlsfarm_farm_id_memory_overflows_total", "memory", memory)
	}
	stranger := cache.NewID()
	var id session.ID
	id[0] = 1
	for i := range maxResumed {
		id[2], id[3], id[4] = byte(i), byte(i>>8), byte(i>>16)
		n.noteResumed(id, now().Add(time.Second), now())
	}
	if gauge("resumed") != 0 || overflows("resumed") != 0 || n.wasResumed(stranger, now()) {
		t.Fatalf("at its bound: overflowed %d, overflows %d, a stranger taken as resumed %v; want 0, 0, false",
			gauge("resumed"), overflows("resumed"), n.wasResumed(stranger, now()))
	}
	id[5] = 1 // one more
	n.noteResumed(id, now().Add(time.Second), now())
	if !n.wasResumed(stranger, now()) {
		t.Fatal("past its bound the memory still tells a stranger from a resumed ID")
	}
	for memory, want := range map[string]uint64{"resumed": 1, "retired": 0, "written": 0} {
		if got, gotN := gauge(memory), overflows(memory); got != want || gotN != want {
			t.Errorf("past the bound of resumed: %s overflowed %d, overflows %d; want %d, %d", memory, got, gotN, want, want)
		}
	}
	clock.Store(now().Add(n.cfg.MaxAge + n.cfg.MaxSkew + time.Second).UnixNano())
	if gauge("resumed") != 0 || overflows("resumed") != 1 || n.wasResumed(stranger, now()) {
		t.Errorf("once the forgotten IDs lapsed: overflowed %d, overflows %d, a stranger taken as resumed %v; want 0, 1, false",
			gauge("resumed"), overflows("resumed"), n.wasResumed(stranger, now()))
	}
}
