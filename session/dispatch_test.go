package session

import (
	"fmt"
	"testing"
)

// BenchmarkDispatch measures firing one event to 0 and 1 hooks.
func BenchmarkDispatch(b *testing.B) {
	for _, n := range []int{0, 1} {
		b.Run(fmt.Sprintf("hooks=%d", n), func(b *testing.B) {
			c, err := New(&Config{SweepInterval: -1})
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			var seen int
			if n == 1 {
				c.AddHook(eventAll, func(Event) { seen++ })
			}
			ev := Event{Kind: EventNew, ID: c.NewID()}
			b.ReportAllocs()
			for b.Loop() {
				c.fire(ev)
			}
			if seen == 0 && n == 1 {
				b.Fatal("hook not called")
			}
		})
	}
}

// BenchmarkIDCheck is the ID check on the handshake path, whose scratch
// block lives in the per-handshake state.
func BenchmarkIDCheck(b *testing.B) {
	c, err := New(&Config{SweepInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	id := c.NewID()
	var tmp [16]byte
	k := c.keys.Load()
	b.ReportAllocs()
	for b.Loop() {
		if !k.check(id[:], &tmp) {
			b.Fatal("rejected")
		}
	}
}
