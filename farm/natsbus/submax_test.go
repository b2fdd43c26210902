package natsbus_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// TestSubscribeOverMaxSubscriptionsIsNotUp: a server whose
// max_subscriptions the connection has reached refuses the bus
// subscription; Subscribe must say so (the farm then counts the bus down
// and subscribes again later) rather than report the subscription up and
// wait for messages that never come, as it did: the server names no
// subject in that refusal, and only permission refusals were read.
func TestSubscribeOverMaxSubscriptionsIsNotUp(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(conf, []byte("max_subscriptions: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startNATS(t, "-c", conf)
	tr, err := natsbus.Open(srv.URL(""), farmtest.FarmName(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// A store call takes the connection's one subscription (JetStream's
	// replies).
	if _, err := tr.Get(ctx, "warm"); err != transport.ErrNotFound {
		t.Fatalf("Get = %v", err)
	}
	var ups, downs int
	err = tr.Subscribe(ctx, func([]byte) {}, func(up bool, err error) {
		if up {
			ups++
		} else if err != nil {
			downs++
		}
	})
	if err == nil || !strings.Contains(err.Error(), "refused the bus subscription") {
		t.Fatalf("Subscribe returned %v (reported up %d times): want the server's refusal", err, ups)
	}
	t.Logf("Subscribe: %v (up %d, down %d)", err, ups, downs)
}
