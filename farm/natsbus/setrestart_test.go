package natsbus_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
)

// TestSetMembersEndsWhenConnectionLost: a read of a set that is under way
// when the client loses its server (here: killed, and started again
// empty) ends with an error within a second or so of the loss, rather
// than waiting out its deadline — a request in flight then is never
// answered, and nats.go does not fail it. The farm reads its revocations
// so with a bound of up to 25 s, and its healer, which also notices a
// store that lost its data and writes the node's sessions back, waited
// as long: natsbus TestPromisesRevocationAfterKVRestartedEmpty failed so
// in CI ("n1 wrote its sessions back" timed out after 15 s, n1's logs
// showing no write-back while n2 wrote back at once). It never reports a
// set it did not read whole as read.
func TestSetMembersEndsWhenConnectionLost(t *testing.T) {
	t.Parallel()
	srv := startNATS(t)
	px := nettest.NewProxy(t, srv.Addr())
	tr := open(t, "nats://"+px.Addr, farmtest.FarmName(t))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	now, err := tr.Time(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := tr.SetAdd(ctx, "tomb", fmt.Appendf(nil, "m%d", i), now.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := tr.SetMembers(ctx, "tomb"); err != nil || len(got) != 3 {
		t.Fatalf("SetMembers before the restart = %d members, %v; want 3", len(got), err)
	}

	// The read's requests wait in the frozen proxy, unanswered, when
	// the server goes; the client then reconnects to the new one.
	px.Freeze()
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	const bound = 30 * time.Second
	go func() {
		rctx, cancel := context.WithTimeout(context.Background(), bound)
		defer cancel()
		got, err := tr.SetMembers(rctx, "tomb")
		done <- result{len(got), err}
	}()
	// The read's first request held, not merely sent: on a loaded machine
	// 200ms was not always enough for the goroutine to send it.
	farmtest.Eventually(t, 10*time.Second, "the frozen proxy to hold a request of SetMembers", func() bool { return px.Holding() > 0 })
	srv.RestartEmpty()
	px.Cut()
	lost := time.Now()
	px.Restore()
	select {
	case r := <-done:
		took := time.Since(lost)
		t.Logf("SetMembers ended %v after the connection was cut: %d members, %v", took.Round(time.Millisecond), r.n, r.err)
		if r.err == nil {
			t.Fatalf("SetMembers across the restart returned %d members and no error: a set not read whole taken for the set", r.n)
		}
		if took > 5*time.Second {
			t.Fatalf("SetMembers ended %v after the connection was lost; want within 5 s", took)
		}
	case <-time.After(bound + 5*time.Second):
		t.Fatal("SetMembers did not end")
	}
}
