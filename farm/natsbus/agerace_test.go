package natsbus_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// TestLegacyAgeLimitRaisedConcurrently: on a server without per-message
// TTL, two nodes that raise the bucket's age limit at once, for keys of
// different lifetimes, leave it covering the longer. A stream update is
// not conditional: the node with the shorter need, having read the limit
// before the other's update, used to lower it again after it (20 of 40
// rounds here; with the limit read back after each update, still 1 in 40
// on a quiet machine and 6 in 40 on a loaded one). The needs are now
// recorded by compare-and-set in the bucket and read again after each
// update, which closes the race.
func TestLegacyAgeLimitRaisedConcurrently(t *testing.T) {
	t.Parallel()
	srv := startNATS(t)
	name := farmtest.FarmName(t)
	ctx := context.Background()
	var trs [2]*natsbus.Transport
	for i := range trs {
		tr, err := natsbus.Open(srv.URL(""), name, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		if _, err := tr.Get(ctx, "warm"); err != transport.ErrNotFound {
			t.Fatalf("Get = %v", err)
		}
		trs[i] = tr
	}
	if native, err := trs[0].NativeTTL(ctx); err != nil || native {
		t.Skipf("the server expires keys itself (NativeTTL %t, %v)", native, err)
	}
	js, err := jetstream.New(trs[0].Conn())
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, "KV_"+trs[0].Bucket())
	if err != nil {
		t.Fatal(err)
	}
	lost := 0
	const rounds = 40
	for i := 1; i <= rounds; i++ {
		long := natsbus.DefaultLegacyMaxAge + time.Duration(2*i)*time.Hour
		short := long - time.Hour
		var wg sync.WaitGroup
		errs := make([]error, 2)
		wg.Go(func() { _, errs[0] = trs[0].SetNX(ctx, fmt.Sprint("long", i), []byte("v"), long) })
		wg.Go(func() { _, errs[1] = trs[1].SetNX(ctx, fmt.Sprint("short", i), []byte("v"), short) })
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.Config.MaxAge < long {
			lost++
		}
	}
	if lost > 0 {
		t.Fatalf("in %d of %d rounds the age limit ended below the longer key's lifetime", lost, rounds)
	}
	t.Logf("in %d of %d rounds the age limit ended below the longer key's lifetime", lost, rounds)
}
