package natsbus

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"

	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// Ping implements transport.Pinger: one PING to the server, answered within
// ctx. It fails at once while the client is reconnecting.
func (t *Transport) Ping(ctx context.Context) error {
	if st := t.nc.Status(); st != nats.CONNECTED {
		return fmt.Errorf("natsbus: ping: connection is %v", st)
	}
	if err := t.nc.FlushWithContext(ctx); err != nil {
		return fmt.Errorf("natsbus: ping: %w", err)
	}
	return nil
}

// MaxMessageSize implements transport.MessageLimiter: the max_payload the
// server announced (1 MiB by default), or 0 before the first connection.
func (t *Transport) MaxMessageSize() int { return int(t.nc.MaxPayload()) }

var (
	_ transport.Pinger         = (*Transport)(nil)
	_ transport.MessageLimiter = (*Transport)(nil)
	_ transport.DeliveryMarker = (*Transport)(nil)
)

// ConnectedServer implements transport.ServerTeller: the ID of the server
// the connection is on, "" while it is not connected.
func (t *Transport) ConnectedServer() string {
	if t.nc.Status() != nats.CONNECTED {
		return ""
	}
	return t.nc.ConnectedServerId()
}

var _ transport.ServerTeller = (*Transport)(nil)
