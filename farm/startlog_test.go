package farm_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/logtest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// slowBus subscribes only after a delay, as a bus still connecting does.
type slowBus struct {
	transport.Bus
	delay time.Duration
}

func (b slowBus) Subscribe(ctx context.Context, deliver func([]byte), state func(bool, error)) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(b.delay):
	}
	return b.Bus.Subscribe(ctx, deliver, state)
}

// deadBus reports itself down at once and never comes up.
type deadBus struct{}

func (deadBus) Publish(context.Context, ...[]byte) error { return errors.New("bus down") }

func (deadBus) Subscribe(ctx context.Context, _ func([]byte), state func(bool, error)) error {
	state(false, errors.New("bus down"))
	<-ctx.Done()
	return ctx.Err()
}

const fallbackWarning = "farm: unreachable; issuing short-lived farm tickets"

// TestStartIsNotAnOutage checks that a node whose bus is still connecting
// when its ticket key rotation starts does not log that the farm is
// unreachable (a healthy start used to warn, then say "reachable again"),
// and that a bus that reports itself down still gets the warning.
func TestStartIsNotAnOutage(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	join := func(t *testing.T, wrap func(transport.Bus) transport.Bus) (*farmtest.Member, *logtest.Buffer) {
		var logs logtest.Buffer
		m := farmtest.Join(t, "n1", farmtest.FarmName(t), farmtest.Options{
			NewTransport: func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
				bus, store := redisTransport(url)(t, farmName)
				return wrap(bus), store
			},
			Secret:   farm.NewSecret(1),
			Rotation: &farm.RotationConfig{Interval: time.Hour},
			Logger:   slog.New(slog.NewTextHandler(&logs, nil)),
		})
		return m, &logs
	}

	t.Run("connecting", func(t *testing.T) {
		m, logs := join(t, func(b transport.Bus) transport.Bus { return slowBus{b, 300 * time.Millisecond} })
		farmtest.WaitConnected(t, m)
		time.Sleep(50 * time.Millisecond)
		if on, _ := m.Node.FallbackState(); on {
			t.Error("fallback tickets still on after the bus came up")
		}
		if s := logs.String(); strings.Contains(s, fallbackWarning) || strings.Contains(s, "reachable again") {
			t.Errorf("a start logged an outage:\n%s", s)
		}
	})

	t.Run("down", func(t *testing.T) {
		m, logs := join(t, func(transport.Bus) transport.Bus { return deadBus{} })
		farmtest.Eventually(t, 5*time.Second, "the fallback warning", func() bool {
			return strings.Contains(logs.String(), fallbackWarning)
		})
		if on, _ := m.Node.FallbackState(); !on {
			t.Error("fallback tickets off while the bus is down")
		}
		if n := strings.Count(logs.String(), fallbackWarning); n != 1 {
			t.Errorf("fallback warning logged %d times, want 1", n)
		}
	})
}
