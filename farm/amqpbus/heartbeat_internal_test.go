package amqpbus

import (
	"context"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
)

// TestHeartbeatNegotiated pins what docs/transports.md and tlsfarm check's
// warning say about the heartbeat option, against the machine's broker:
// without it the bus's Options.Heartbeat (5s) applies; heartbeat=2 gives
// 2s; heartbeat=0 is accepted but does not turn heartbeats off:
// amqp091-go takes the broker's interval (RabbitMQ's default, 60s), and
// none only where the broker's is 0 too.
func TestHeartbeatNegotiated(t *testing.T) {
	url := farmtest.ServerURL(t, "RabbitMQ", "TLSFARM_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
	negotiated := func(query string) time.Duration {
		b, err := Open(url+query, farmtest.FarmName(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, _, err := b.dial(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.Config.Heartbeat
	}
	if got := negotiated(""); got != DefaultHeartbeat {
		t.Errorf("no heartbeat option: %v, want %v", got, DefaultHeartbeat)
	}
	if got := negotiated("?heartbeat=2"); got != 2*time.Second {
		t.Errorf("heartbeat=2: %v, want 2s", got)
	}
	got := negotiated("?heartbeat=0")
	t.Logf("heartbeat=0: the broker's interval, %v", got)
	if got == 0 {
		t.Skip("this broker's own heartbeat is 0: heartbeats are off")
	}
	if got == DefaultHeartbeat {
		t.Errorf("heartbeat=0 gave the bus's default %v, not the broker's", got)
	}
}
