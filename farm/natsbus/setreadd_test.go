package natsbus_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
)

// TestSetMembersWhileReAdding: a set of 2,000 members is read while
// another writer adds new members and adds old ones again (the same
// bytes, as a retried revocation does). Every read must hold every member
// that was in the set before it began. The watcher the read uses ended
// once it had as many entries as were pending when it began; a member
// added again replaces its message, whose first one is then never
// delivered, and the read left it out (in most reads, on nats-server 2.9
// and on the current release alike). Each read must also end, however
// fast members keep coming.
func TestSetMembersWhileReAdding(t *testing.T) {
	t.Parallel()
	for name, url := range map[string]func(testing.TB) string{"shared": sharedURL, "embedded": embedded} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			tr := open(t, url(t), farmtest.FarmName(t))
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			const n = 2000
			member := func(i int) []byte { return fmt.Appendf(nil, "member-%06d", i) }
			until := time.Now().Add(time.Hour)
			var wg sync.WaitGroup
			sem := make(chan struct{}, 64)
			for i := range n {
				wg.Add(1)
				sem <- struct{}{}
				go func() {
					defer wg.Done()
					defer func() { <-sem }()
					if err := tr.SetAdd(ctx, "revoked", member(i), until); err != nil {
						t.Error(err)
					}
				}()
			}
			wg.Wait()
			missed, reads := 0, 10
			for round := range reads {
				stop := make(chan struct{})
				var adder sync.WaitGroup
				adder.Go(func() {
					for j := 0; ; j++ {
						select {
						case <-stop:
							return
						default:
						}
						tr.SetAdd(ctx, "revoked", fmt.Appendf(nil, "late-%d-%06d", round, j), until)
						tr.SetAdd(ctx, "revoked", member(j%n), until)
					}
				})
				start := time.Now()
				got, err := tr.SetMembers(ctx, "revoked")
				took := time.Since(start)
				close(stop)
				adder.Wait()
				if err != nil {
					t.Fatalf("read %d: %v", round, err)
				}
				have := make(map[string]bool, len(got))
				for _, m := range got {
					have[string(m)] = true
				}
				for i := range n {
					if !have[string(member(i))] {
						missed++
						t.Errorf("read %d (%v, %d members): member %d, in the set all along, left out", round, took.Round(time.Millisecond), len(got), i)
					}
				}
			}
			t.Logf("%d members left out in %d reads", missed, reads)
		})
	}
}
