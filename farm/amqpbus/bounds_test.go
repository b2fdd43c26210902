package amqpbus_test

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/amqpbus"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/testenv"
)

// TestConsumerHasPrefetchBound: the subscriber acknowledges its messages
// and asks the broker for at most Options.Prefetch ahead of them, so a
// slow node's buffer is bounded (the broker keeps the rest in its queue).
func TestConsumerHasPrefetchBound(t *testing.T) {
	url := brokerURL(t)
	if _, err := exec.LookPath("rabbitmqctl"); err != nil {
		testenv.Skip(t, "rabbitmqctl is not installed")
	}
	const prefetch = 37 // unusual, to find this consumer among others
	b := open(t, url, farmtest.FarmName(t), &amqpbus.Options{Prefetch: prefetch})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	up := make(chan struct{}, 1)
	go b.Subscribe(ctx, func([]byte) {}, func(ok bool, _ error) {
		if ok {
			up <- struct{}{}
		}
	})
	select {
	case <-up:
	case <-time.After(10 * time.Second):
		t.Fatal("not subscribed")
	}
	out, err := exec.Command("rabbitmqctl", "-q", "list_consumers", "--no-table-headers", "ack_required", "prefetch_count").CombinedOutput()
	if err != nil {
		testenv.Skip(t, "rabbitmqctl list_consumers does not work here: %v: %s", err, out)
	}
	if !strings.Contains(string(out), "true\t37\n") {
		t.Fatalf("no consumer with acknowledgments and a prefetch of %d:\n%s", prefetch, out)
	}

	// The health probe answers while the broker does, and not once the
	// bus is closed.
	pctx, pcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer pcancel()
	if err := b.Ping(pctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	b.Close()
	if err := b.Ping(pctx); err == nil {
		t.Fatal("Ping on a closed bus succeeded")
	}
}
