package natsbus_test

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
)

// TestLapsedMemberPurgeSparesReAdd: on a server without per-message TTL,
// SetMembers purges the lapsed members it read. A member added again
// (with a later time) after it was read and before the purge arrives must
// survive: the purge is for the lapsed value, not for the key. Before the
// fix it dropped the new member, and with it a revocation.
func TestLapsedMemberPurgeSparesReAdd(t *testing.T) {
	t.Parallel()
	srv := startNATS(t)
	name := farmtest.FarmName(t)
	direct := open(t, srv.URL(""), name)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if native, err := direct.NativeTTL(ctx); err != nil {
		t.Fatal(err)
	} else if native {
		t.Skip("the server expires keys itself: SetMembers purges nothing")
	}
	px := nettest.NewProxy(t, srv.Addr())
	slow := open(t, "nats://"+px.Addr, name)
	if _, err := slow.Time(ctx); err != nil { // the bucket is open
		t.Fatal(err)
	}
	member := []byte("revoked")
	if err := direct.SetAdd(ctx, "tomb", member, time.Now().Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}

	// Watch what the server delivers to the slow node's watcher: as soon
	// as it has sent the lapsed member, add the member again, for an hour.
	spy, err := nats.Connect(srv.URL(""))
	if err != nil {
		t.Fatal(err)
	}
	defer spy.Close()
	readded := make(chan error, 1)
	var once sync.Once
	sub, err := spy.Subscribe("_INBOX.>", func(m *nats.Msg) {
		if !bytes.HasSuffix(m.Data, member) {
			return
		}
		once.Do(func() {
			readded <- direct.SetAdd(context.Background(), "tomb", member, time.Now().Add(time.Hour))
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	spy.Flush()

	px.SetLatency(150 * time.Millisecond)
	if _, err := slow.SetMembers(ctx, "tomb"); err != nil {
		t.Fatal(err)
	}
	px.SetLatency(0)
	select {
	case err := <-readded:
		if err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatal("the spy never saw the lapsed member delivered")
	}
	got, err := direct.SetMembers(ctx, "tomb")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !bytes.Equal(got[0], member) {
		t.Fatalf("members after the re-add: %d, want the one re-added: the purge of its lapsed value dropped it", len(got))
	}
}
