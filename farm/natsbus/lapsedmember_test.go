package natsbus_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
)

// TestLapsedSetMemberExpires: a set member added with a time already
// past is written with a TTL of its own, like any other, on a server that
// expires keys by their TTL. Before the fix its TTL came out negative and
// it was written with none: on such a server (where SetMembers purges
// nothing) it stayed in the bucket for good, read at every SetMembers.
func TestLapsedSetMemberExpires(t *testing.T) {
	t.Parallel()
	tr := open(t, embedded(t), farmtest.FarmName(t))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if native, err := tr.NativeTTL(ctx); err != nil {
		t.Fatal(err)
	} else if !native {
		t.Skip("the server does not expire keys by their own TTL")
	}
	if err := tr.SetAdd(ctx, "tomb", []byte("lapsed"), time.Now().Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(tr.Conn())
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, "KV_"+tr.Bucket())
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetLastMsgForSubject(ctx, "$KV."+tr.Bucket()+"._set.>")
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get(jetstream.MsgTTLHeader) == "" {
		t.Fatalf("lapsed member written with no TTL (headers %v): it never expires", m.Header)
	}
	// And the server drops it (leaving at most an expiry marker).
	time.Sleep(2500 * time.Millisecond)
	m, err = st.GetLastMsgForSubject(ctx, m.Subject)
	if err == nil && m.Header.Get("Nats-Marker-Reason") == "" {
		t.Fatalf("lapsed member still stored 2.5 s later: %v", m.Header)
	}
}
