package farm

import (
	"context"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestQueueHeldPushDoesNotWake: with a flush window, a session queued
// behind others that wait does not wake the publisher (its held pop sleeps
// until the oldest one's window ends, which the new one does not move); the
// first session, an urgent item and the one that fills a batch do. Before,
// every push woke it, only for it to sleep again: a wake-up for each
// session a busy node issued.
func TestQueueHeldPushDoesNotWake(t *testing.T) {
	const batch = 8
	q := newQueue(64)
	q.setWindow(time.Hour, batch)
	newItem := func(i byte) item { return item{id: session.ID{i}, op: opNew} }
	tokens := func() int {
		n := len(q.ready)
		if n > 0 {
			<-q.ready // as the held pop takes it
		}
		return n
	}

	q.push(newItem(1))
	if n := tokens(); n != 1 {
		t.Fatalf("the first session queued: %d wake-ups, want 1", n)
	}
	for i := byte(2); i < batch; i++ {
		q.push(newItem(i))
		if n := tokens(); n != 0 {
			t.Fatalf("session %d queued behind others in the window: %d wake-ups, want 0", i, n)
		}
	}
	q.push(newItem(batch))
	if n := tokens(); n != 1 {
		t.Fatalf("the session that fills a batch: %d wake-ups, want 1", n)
	}
	got, err := q.popHeld(context.Background(), time.NewTimer(time.Hour), nil, batch)
	if err != nil || len(got) != batch {
		t.Fatalf("a full batch: popHeld took %d items (%v), want %d at once", len(got), err, batch)
	}

	// A held pop that sleeps on the window: a session queued behind does
	// not end it early, a retirement does, and takes everything.
	q.push(newItem(20))
	done := make(chan []item, 1)
	go func() {
		got, _ := q.popHeld(context.Background(), time.NewTimer(time.Hour), nil, batch)
		done <- got
	}()
	q.push(newItem(21))
	select {
	case got := <-done:
		t.Fatalf("a session that may wait ended the window: popHeld took %d items", len(got))
	case <-time.After(50 * time.Millisecond):
	}
	q.push(item{id: session.ID{22}, op: opRetire})
	select {
	case got := <-done:
		if len(got) != 3 {
			t.Fatalf("after a retirement popHeld took %d items, want 3", len(got))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a retirement did not end the window")
	}

	// The window itself still ends the wait.
	q.setWindow(20*time.Millisecond, batch)
	q.push(newItem(30))
	q.push(newItem(31))
	start := time.Now()
	got, err = q.popHeld(context.Background(), time.NewTimer(time.Hour), nil, batch)
	if err != nil || len(got) != 2 {
		t.Fatalf("at the window's end popHeld took %d items (%v), want 2", len(got), err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("popHeld waited %v for a 20ms window", d)
	}
}

// BenchmarkQueueHeldPush: the publish queue with a 10ms flush window and
// its publisher (a held pop, as drain's) while sessions are pushed one at
// a time, 50µs apart, as a busy node's handshakes issue them. cpu-µs/op
// and ctxsw/op are the whole process's per session pushed, the pushing
// goroutine's sleeps included.
func BenchmarkQueueHeldPush(b *testing.B) {
	const batch = 256
	q := newQueue(4096)
	q.setWindow(10*time.Millisecond, batch)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int)
	go func() {
		held := time.NewTimer(time.Hour)
		held.Stop()
		buf := make([]item, 0, batch)
		popped := 0
		for {
			var err error
			buf, err = q.popHeld(ctx, held, buf[:0], batch)
			popped += len(buf)
			if err != nil {
				done <- popped
				return
			}
		}
	}()
	start := tlstest.Snapshot()
	b.ResetTimer()
	for i := range b.N {
		q.push(item{id: session.ID{byte(i), byte(i >> 8), byte(i >> 16)}, op: opNew})
		time.Sleep(50 * time.Microsecond)
	}
	b.StopTimer()
	start.Report(b)
	cancel()
	<-done
}
